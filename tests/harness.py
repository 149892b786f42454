"""Test hooks on real processes: a throw-away RabbitMQ vhost, the suite's stack of workers, a stack of a test's own,
Python child processes, waiting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from django.conf import settings
from django.db import connection

from devstack.config import StackConfig
from devstack.stack import Stack
from eventbus.broker_admin import ManagementApi
from eventbus.identities import url_as, url_vhost
from eventbus.passwords import ADMIN, PasswordFile

ROOT = Path(__file__).resolve().parent.parent
# What the suite's own stack exports: a stack of a test's own must not inherit it (`make run` would honour these and
# start no servers of its own).
SUITE_STACK_VARIABLES = (
    "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "RABBITMQ_MANAGEMENT_URL",
    "CACHE_KEY_PREFIX", "RUN_DIR", "STACK_DB", "RABBITMQ_NODES",
)  # fmt: skip


def broker_urls(url: str) -> list[str]:
    """The node URLs of a `;`-separated failover broker URL."""
    return [part for part in url.split(";") if part]


def management_auth(url: str) -> tuple[str, str]:
    parts = urlsplit(broker_urls(url)[0])
    return unquote(parts.username or "guest"), unquote(parts.password or "guest")


def on_vhost(url: str, vhost: str) -> str:
    """`url` (every node of it) moved to `vhost`."""
    path = "/" + quote(vhost, safe="")
    return ";".join(urlunsplit((p.scheme, p.netloc, path, "", "")) for p in map(urlsplit, broker_urls(url)))


def admin_url() -> str:
    """The broker's administrator on the stack's broker, with the password of the stack's password file
    (`make test` exports that URL; run by hand, CELERY_BROKER_URL may name no user)."""
    return url_as(settings.CELERY_BROKER_URL, ADMIN, PasswordFile(settings.BROKER_PASSWORD_FILE).password(ADMIN))


@contextmanager
def temporary_vhost() -> Iterator[str]:
    """Create a vhost for this test run, yield the administrator's URL on it, delete it (and its queues) after."""
    url = on_vhost(admin_url(), f"test-{uuid.uuid4().hex[:10]}")
    api = ManagementApi(url)
    api.create_vhost()
    try:
        yield url
    finally:
        api.delete_vhost()


def database_url(settings_dict: dict) -> str:
    """The URL of the database the test process is using, for its child processes."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine == "django.db.backends.postgresql":
        user, password = quote(settings_dict["USER"] or ""), quote(settings_dict["PASSWORD"] or "")
        host, port = settings_dict["HOST"] or "127.0.0.1", settings_dict["PORT"] or 5432
        return f"postgres://{user}:{password}@{host}:{port}/{settings_dict['NAME']}"
    raise RuntimeError(f"no child-process URL for database engine {engine}")


def process_stack(env: dict[str, str], **ports: int) -> Stack:
    """A stack of processes (no servers: `make test` runs those) on the test run's vhost (that of env's
    CELERY_BROKER_URL) and database, each as its own broker user with the passwords of `make test`'s stack,
    and on the test process's own settings module."""
    # Logs go to <RUN_DIR>/test-stack/logs; the processes keep the suite's RUN_DIR (its seal key, its files).
    config = StackConfig(
        run_dir=settings.RUN_DIR / "test-stack", credentials_file=settings.BROKER_PASSWORD_FILE, **ports
    )
    vhost = url_vhost(env["CELERY_BROKER_URL"])
    overrides = {"RUN_DIR": str(settings.RUN_DIR), **env}
    return Stack(config, settings=settings.SETTINGS_MODULE, overrides=overrides, vhost=vhost)


def own_stack_env() -> dict[str, str]:
    """The test process's environment without what points at the suite's own stack: for a stack of a test's own."""
    return {key: value for key, value in os.environ.items() if key not in SUITE_STACK_VARIABLES}


def own_run_dir(name: str) -> Path:
    """A new run directory (data, logs) for a stack of a test's own: <project>/.run/<name>-test-<random>."""
    return ROOT / ".run" / f"{name}-test-{uuid.uuid4().hex[:8]}"


def stack_db() -> str:
    """devstack's name (STACK_DB, --db) for the kind of database this test run uses, for a stack of a test's own."""
    return "postgres" if connection.vendor == "postgresql" else "sqlite"


def environment(**changes: str | None) -> dict[str, str]:
    """The test process's environment on its settings module, with `changes` (None: without that variable), for a
    Python child process."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE, **changes}
    return {key: value for key, value in env.items() if value is not None}


def python(code: str, env: dict[str, str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new Python process of the venv, in the project directory, with exactly `env`; its output and
    errors are captured as text."""
    argv = [sys.executable, "-c", code]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def python_started(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`code` started as `python` runs it, not waited for (to run several at once); output and errors piped, as text."""
    argv = [sys.executable, "-c", code]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def wait_settled(broker_url: str, *, timeout: float = 30) -> None:
    """Wait until the suite's stack has finished a test's work: every event sent from the outbox, no message waiting
    on a service's queue and, on PostgreSQL, no other session inside a transaction, seen three times in a row.
    Emptying the database under a handler's transaction can deadlock with it (TRUNCATE locks table by table).
    Best effort: a test that leaves work behind on purpose (a retry far off) still ends after `timeout`. It asks
    from a thread of its own: a browser test's teardown runs inside Playwright's event loop, where the ORM refuses."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_wait_settled, broker_url, timeout).result()


def _wait_settled(broker_url: str, timeout: float) -> None:
    from kombu import Connection

    from devstack import pipeline
    from devstack.stack import expected_consumers, queue_state
    from eventbus.models import OutboxMessage

    queues = sorted(expected_consumers([service.name for service in pipeline.services()]))
    deadline, quiet = time.monotonic() + timeout, 0
    try:
        with Connection(broker_url) as broker:
            while quiet < 3 and time.monotonic() < deadline:
                try:
                    waiting = any(state and state[0] for state in (queue_state(broker, queue) for queue in queues))
                except broker.connection_errors:
                    waiting = True  # the broker is coming back (a test restarted it): ask again
                unsent = OutboxMessage.objects.filter(sent_at__isnull=True).exists()
                quiet = 0 if waiting or unsent or _sessions_in_transaction() else quiet + 1
                time.sleep(0.1)
    finally:
        connection.close()  # this thread's own


def _sessions_in_transaction() -> int:
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend' AND xact_start IS NOT NULL"
        )
        return cursor.fetchone()[0]


def ports_block() -> dict[str, int]:
    """Ports for a whole stack, with AMQP + 20000 (Erlang distribution) free too."""
    for base in range(5740, 5800, 3):
        ports = {"RABBITMQ_PORT": base, "RABBITMQ_MANAGEMENT_PORT": base + 10000, "REDIS_PORT": base + 800,
                 "POSTGRES_PORT": base + 190}  # fmt: skip
        if not any(port_in_use(port) for port in (*ports.values(), base + 20000)):
            return {**ports, "WEB_PORT": free_port(), "FLOWER_PORT": free_port()}
    raise AssertionError("no free ports for a second stack")


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
