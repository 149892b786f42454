"""Real processes for integration tests: a throw-away RabbitMQ vhost and Celery workers on it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from django.conf import settings

from devstack.supervisor import signal_group, stop_groups

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / ".run" / "test-logs"


def _management_auth() -> tuple[str, str]:
    parts = urlsplit(settings.CELERY_BROKER_URL)
    return parts.username or "guest", parts.password or "guest"


@contextmanager
def temporary_vhost() -> Iterator[str]:
    """Create a vhost for this test run, yield a broker URL on it, delete it (and its queues) after."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    api = settings.RABBITMQ_MANAGEMENT_URL.rstrip("/") + "/api"
    auth = _management_auth()
    requests.put(f"{api}/vhosts/{quote(name, safe='')}", auth=auth, timeout=10).raise_for_status()
    requests.put(
        f"{api}/permissions/{quote(name, safe='')}/{auth[0]}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=auth,
        timeout=10,
    ).raise_for_status()
    parts = urlsplit(settings.CELERY_BROKER_URL)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(name, safe=""), "", ""))
    finally:
        requests.delete(f"{api}/vhosts/{quote(name, safe='')}", auth=auth, timeout=30)


def database_url(settings_dict: dict) -> str:
    """The URL of the database the test process is using, for its child processes."""
    engine = settings_dict["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        return f"sqlite:///{settings_dict['NAME']}"
    if engine == "django.db.backends.postgresql":
        user, password = quote(settings_dict["USER"] or ""), quote(settings_dict["PASSWORD"] or "")
        host, port = settings_dict["HOST"] or "127.0.0.1", settings_dict["PORT"] or 5432
        return f"postgres://{user}:{password}@{host}:{port}/{settings_dict['NAME']}"
    raise RuntimeError(f"no child-process URL for database engine {engine}")


@dataclass
class ProcessGroup:
    """Child processes sharing one environment, each logging to its own file, stopped together."""

    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = (LOG_DIR / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start_worker(self, service: str, queues: str, *, concurrency: int = 1) -> subprocess.Popen[bytes]:
        return self.start(
            f"worker-{service}",
            [sys.executable, "-m", "celery", "-A", "orderproj", "worker", "-Q", queues, "-n", f"{service}-test@%h",
             "--concurrency", str(concurrency), "-l", "INFO", "--without-gossip", "--without-mingle"],
        )  # fmt: skip

    def start_relay(self) -> subprocess.Popen[bytes]:
        return self.start("relay", [sys.executable, "manage.py", "relay", "--poll", "0.5"])

    def start_web(self, port: int) -> subprocess.Popen[bytes]:
        return self.start("web", [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"])

    def start_flower(self, port: int) -> subprocess.Popen[bytes]:
        broker_api = f"{self.env['RABBITMQ_MANAGEMENT_URL'].rstrip('/')}/api/"
        return self.start(
            "flower",
            [sys.executable, "-m", "celery", "-A", "orderproj", "flower", "--address=127.0.0.1", f"--port={port}",
             f"--broker-api={broker_api}"],
        )  # fmt: skip

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = LOG_DIR / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        signal_group(self.procs[name], signum)
        self.procs[name].wait(30)

    def stop_all(self, timeout: float = 20) -> None:
        stop_groups(list(self.procs.values()), timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, procs: ProcessGroup, name: str, timeout: float = 60) -> None:
    def answers() -> bool:
        if procs.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited:\n{procs.log_tail(name)}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(answers, timeout=timeout, what=f"{name} on port {port}")


def wait_for(condition, *, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    """Poll `condition` until it returns something truthy, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_workers(app, names: list[str], procs: ProcessGroup, timeout: float = 60) -> None:
    """Block until every named worker answers a control ping; fail with its log if it died."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for proc_name, proc in procs.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{proc_name} exited with {proc.returncode}:\n{procs.log_tail(proc_name)}")
        replies = app.control.ping(timeout=1.0) or []
        answered = {host.split("@", 1)[0] for reply in replies for host in reply}
        pending -= answered
        if time.monotonic() > deadline:
            logs = "\n".join(procs.log_tail(name) for name in procs.procs)
            raise TimeoutError(f"workers {sorted(pending)} did not answer within {timeout}s:\n{logs}")
