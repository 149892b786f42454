"""The pipeline's processes, derived from the subscription registry: one worker per subscribing service,
the relay, web, beat and Flower. Every harness starts them from here; the Procfile is checked against it.

Reading the registry needs Django set up (subscriptions register when the apps load).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

PYTHON = sys.executable
CELERY = [PYTHON, "-m", "celery", "-A", "orderproj"]
MANAGE = [PYTHON, "manage.py"]


@dataclass(frozen=True)
class Service:
    """A subscribing service as its worker sees it: the task queues it runs and the event queue it takes in."""

    name: str
    task_queues: tuple[str, ...]
    event_queue: str

    @property
    def consumed(self) -> tuple[str, ...]:
        return (*self.task_queues, self.event_queue)


def services() -> list[Service]:
    """Every subscribing service. Each worker also runs the bus's housekeeping queue (sweep, retention),
    so that housekeeping has no process of its own and goes on while any worker is up."""
    from django.conf import settings

    from eventbus.subscriptions import subscribers

    housekeeping = settings.CELERY_TASK_DEFAULT_QUEUE
    return [Service(s.service, (s.task_queue, housekeeping), s.queue) for s in subscribers()]


def service(name: str) -> Service:
    for candidate in services():
        if candidate.name == name:
            return candidate
    raise LookupError(f"no subscribing service named {name!r}")


def worker_argv(
    svc: Service, *, name: str | None = None, concurrency: int = 2, loglevel: str = "INFO", extra: tuple[str, ...] = ()
) -> list[str]:
    """`celery worker` for one service; `name` (default: the service) becomes the node name `<name>@<host>`."""
    return [*CELERY, "worker", "-Q", ",".join(svc.task_queues), "-n", f"{name or svc.name}@%h",
            "--concurrency", str(concurrency), "-l", loglevel, *extra]  # fmt: skip


def relay_argv(name: str = "relay", *, poll: float | None = None) -> list[str]:
    return [*MANAGE, "relay", "--name", name, *(["--poll", str(poll)] if poll is not None else [])]


def web_argv(host: str, port: int | str) -> list[str]:
    return [*MANAGE, "runserver", f"{host}:{port}", "--noreload"]


def beat_argv(loglevel: str = "INFO") -> list[str]:
    return [*CELERY, "beat", "-l", loglevel]


def flower_argv(host: str, port: int | str, management_url: str) -> list[str]:
    return [*CELERY, "flower", f"--address={host}", f"--port={port}", f"--broker-api={management_url.rstrip('/')}/api/"]


def procfile() -> str:
    """The Procfile `make run` amounts to, in foreman/honcho form (ports from the environment)."""
    lines = [
        "# The processes `make run` starts (python -m devstack run), derived from the subscription registry.",
        "# Checked by tests/test_compose.py against `python -m devstack procfile`. Ports come from the environment.",
        "web: " + _shell(web_argv("127.0.0.1", "${WEB_PORT}")),
        *(f"{svc.name}: " + _shell(worker_argv(svc)) for svc in services()),
        "relay: " + _shell(relay_argv()),
        "beat: " + _shell(beat_argv()),
        "flower: " + _shell(flower_argv("127.0.0.1", "${FLOWER_PORT}", "${RABBITMQ_MANAGEMENT_URL}")),
    ]
    return "\n".join(lines) + "\n"


def _shell(argv: list[str]) -> str:
    head = {tuple(CELERY): "celery -A orderproj", tuple(MANAGE): "python manage.py"}
    for prefix, text in head.items():
        if tuple(argv[: len(prefix)]) == prefix:
            return " ".join([text, *argv[len(prefix) :]])
    return " ".join(argv)
