"""One local stack: its servers (Redis, RabbitMQ nodes, PostgreSQL), its database and its processes.

`make run`, `make test`, `make bench` and `make chaos` all start what they need through `Stack`, so
there is one way to start a server or a process, wait for it, log it, restart it and stop it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from kombu import Connection

from devstack import brokers, pipeline
from devstack.brokers import ManagedProcess, StackError, say
from devstack.config import ROOT, StackConfig
from devstack.postgres import PostgresCluster
from devstack.processes import ProcessGroup
from eventbus.passwords import ADMIN


class Stack:
    """Servers and processes of one stack, everything under `config.run_dir`, stopped by `stop()`.

    `fresh` wipes the run directory first (the benchmark and chaos runs), but for the broker users'
    passwords; without it the data of an earlier run is kept (`make run`). Each process of the pipeline
    connects to the broker on `vhost` as a user of its own (eventbus.identities); everything else the
    stack runs, and the harness itself, is the broker's administrator."""

    def __init__(
        self,
        config: StackConfig,
        *,
        settings: str = "orderproj.settings.local",
        fresh: bool = False,
        echo: bool = False,
        overrides: dict[str, str] | None = None,
        vhost: str = "/",
    ) -> None:
        self.config = config
        self.settings = settings
        self.fresh = fresh
        self.overrides = overrides or {}
        self.vhost = vhost
        self.servers: dict[str, ManagedProcess] = {}
        self.postgres: PostgresCluster | None = None
        self.processes = ProcessGroup(self.env, ROOT, config.log_dir, echo=echo)
        self._lock_file: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment of every child process (and of the harness itself, set before Django loads)."""
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": self.settings,
            **self.config.connection_env(),
            "PROMETHEUS_MULTIPROC_DIR": str(self.config.metrics_dir),
            "CELERY_BROKER_URL": self.broker_url,
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **self.overrides,
        }

    # --- the run directory

    def claim_run_dir(self) -> None:
        """Take the run directory for this stack: one stack per directory, a second one is told who holds it."""
        run_dir = self.config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "stack.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 500).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StackError(
                f"{run_dir} is in use by {holder}; stop it first or set RUN_DIR to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)}\n".encode())
        self._lock_file = fd
        # Private: the database file holds sessions and sealed tokens. PostgreSQL runs as its own user
        # and must be able to pass through to its data directory (which it owns).
        run_dir.chmod(0o711 if self.config.db == "postgres" else 0o700)
        if self.config.db == "postgres" and os.geteuid() == 0:
            _let_postgres_through(run_dir)
        if self.fresh:
            kept = {path, self.config.credentials.path}  # the harness may already hold a password
            for entry in run_dir.iterdir():
                if entry not in kept:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        # Metrics start from zero with the stack: no file of an earlier run's processes is added to its totals.
        shutil.rmtree(self.config.metrics_dir, ignore_errors=True)
        self.config.metrics_dir.mkdir()

    # --- servers

    def start_servers(self) -> None:
        """Install what is missing, then start Redis, every RabbitMQ node (clustered) and PostgreSQL."""
        config = self.config
        if self._lock_file is None:
            self.claim_run_dir()
        brokers.ensure_system_packages()
        brokers.check_ports_free(config, config.server_ports())
        say(f"starting Redis on {config.host}:{config.redis_port}")
        self.servers["redis"] = brokers.start_redis(config)
        ports = ", ".join(str(node.amqp_port) for node in config.nodes)
        say(f"starting RabbitMQ ({config.rabbitmq_nodes} node(s): AMQP {ports}; data in {config.run_dir})")
        for server in brokers.start_rabbitmq(config):
            self.servers[server.name] = server
        if config.db == "postgres":
            say(f"starting PostgreSQL 15 on {config.host}:{config.postgres_port}")
            self.postgres = PostgresCluster(config)
            self.postgres.start()
        self.setup_broker()

    def rabbit_server(self, index: int) -> ManagedProcess:
        return self.servers[f"rabbitmq-{index + 1}"]

    def start_rabbit_node(self, index: int) -> None:
        """Start one node again (after it died or was killed) and wait until it runs."""
        node, server = self.config.nodes[index], self.rabbit_server(index)
        (node.data_dir / "rabbit.pid").unlink(missing_ok=True)  # a killed node leaves it behind
        server.respawn()
        brokers.wait_rabbitmq_node(self.config, node, server)

    def start_redis_again(self) -> None:
        self.servers["redis"].respawn()
        brokers.wait_redis(self.config, self.servers["redis"])

    def revive_servers(self) -> list[str]:
        """Start again every server that died; return what was restarted. Raises when one cannot come back."""
        revived = []
        for name, server in self.servers.items():
            if server.alive():
                continue
            say(f"{name} died (exit {server.proc.returncode}); starting it again. Its log: {server.log_path}")
            if name == "redis":
                self.start_redis_again()
            else:
                self.start_rabbit_node(int(name.rsplit("-", 1)[1]) - 1)
            revived.append(name)
        return revived

    # --- the broker's users

    @property
    def broker_url(self) -> str:
        """The administrator's URL on the stack's vhost: the harness's own, never a pipeline process's."""
        return self.broker_url_as(ADMIN)

    def broker_url_as(self, user: str | None) -> str:
        return self.config.broker_url_as(user, self.vhost)

    def setup_broker(self) -> None:
        """The pipeline's broker users with their permissions on the stack's vhost, and the topology, made
        by `manage.py broker_setup` as the administrator; passwords come from the stack's password file."""
        say(f"broker users and topology on vhost {self.vhost!r} (passwords in {self.config.credentials.path})")
        self.manage("broker_setup", env={"BROKER_ADMIN_URL": self.broker_url})

    def _as_user(self, user: str | None) -> dict[str, str]:
        return {"CELERY_BROKER_URL": self.broker_url_as(user)}

    def _as_ops(self) -> dict[str, str]:
        """Web, beat and Flower: send tasks, read queue statistics, replay dead letters."""
        from eventbus.identities import OPS

        return self._as_user(OPS)

    # --- database

    def manage(self, *args: str, env: dict[str, str] | None = None) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**self.env, **(env or {})}, check=True)

    def migrate(self) -> None:
        self.manage("migrate", "--noinput", "-v", "0")
        database = self.config.run_dir / "db.sqlite3"
        for path in (database, database.with_name("db.sqlite3-wal"), database.with_name("db.sqlite3-shm")):
            if path.exists():
                path.chmod(0o600)  # the sessions table opens the admin to whoever can read it

    # --- pipeline processes

    def start_worker(self, service: str, *, name: str | None = None, concurrency: int = 2, **options) -> str:
        """Start the worker of `service` as `name` (default: the service), as the service's broker user;
        return the name."""
        from eventbus.identities import service_user

        name = name or service
        argv = pipeline.worker_argv(pipeline.service(service), name=name, concurrency=concurrency, **options)
        self.processes.start(name, argv, env={**self._as_user(service_user(service)), "OTEL_SERVICE_NAME": service})
        return name

    def start_relay(self, name: str = "relay", *, poll: float | None = None) -> str:
        """Start a relay: it has no broker user of its own, it publishes each producer's events as that producer."""
        from eventbus.identities import producers, service_user

        users = [service_user(producer) for producer in producers()]
        publishers = ",".join(f"{user}:{self.config.credentials.password(user)}" for user in users)
        env = {**self._as_user(None), "EVENTBUS_PUBLISHER_CREDENTIALS": publishers, "OTEL_SERVICE_NAME": "relay"}
        self.processes.start(name, pipeline.relay_argv(name, poll=poll), env=env)
        return name

    def start_web(self, port: int | None = None) -> None:
        argv = pipeline.web_argv(self.config.host, port or self.config.web_port)
        self.processes.start("web", argv, env={**self._as_ops(), "OTEL_SERVICE_NAME": "web"})

    def start_beat(self) -> None:
        self.processes.start("beat", pipeline.beat_argv(), env={**self._as_ops(), "OTEL_SERVICE_NAME": "beat"})

    def start_flower(self, port: int | None = None) -> None:
        argv = pipeline.flower_argv(self.config.host, port or self.config.flower_port, self.config.management_url)
        self.processes.start("flower", argv, env=self._as_ops())

    # --- readiness

    def wait_consuming(self, expected: dict[str, int], *, timeout: float = 120, broker_url: str | None = None) -> float:
        """Block until each queue has at least its expected number of consumers; fail with the log of a
        process that ended meanwhile. Returns the seconds it took."""
        return wait_consuming(broker_url or self.broker_url, expected, self.processes, timeout=timeout)

    def wait_for_port(self, name: str, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not brokers.port_is_open(self.config.host, port):
            self.processes.check_alive([name])
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not listen on port {port} within {timeout:.0f}s")
            time.sleep(0.2)

    # --- the end

    def stop(self) -> None:
        """Stop every process, then the servers; safe to call more than once."""
        self.processes.stop(timeout=20)
        if self.postgres is not None:
            try:
                self.postgres.stop()
            except StackError as error:
                print(f"stack: {error}", file=sys.stderr)
            self.postgres = None
        rabbits = [server for name, server in self.servers.items() if name.startswith("rabbitmq")]
        if rabbits:
            brokers.stop_rabbitmq(self.config, rabbits)
        if "redis" in self.servers:
            self.servers["redis"].stop()
        self.servers.clear()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None


def _let_postgres_through(run_dir: Path) -> None:
    """The `postgres` user must search every directory above its data directory: the project's own
    (.run and below) are opened for searching only; any other is named in an error."""
    for parent in run_dir.parents:
        mode = parent.stat().st_mode
        if mode & stat.S_IXOTH:
            continue
        if parent.is_relative_to(ROOT / ".run"):
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            continue
        raise StackError(
            f"PostgreSQL runs as the user postgres, which cannot reach {run_dir}: {parent} is not searchable "
            f"by others. `chmod o+x {parent}`, or set RUN_DIR (or --run-dir) to a directory it can reach."
        )


def queue_state(connection: Connection, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of `queue`, straight from the broker (a passive declare: no statistics
    delay); None when the queue does not exist (yet)."""
    try:
        _, messages, consumers = connection.default_channel.queue_declare(queue=queue, passive=True)
    except connection.channel_errors:
        connection.close()  # the failed declare closed the channel; the next question reconnects
        return None
    return messages, consumers


def queue_consumers(connection: Connection, queues: list[str]) -> dict[str, int | None]:
    """Consumers per queue; None when the queue does not exist (yet)."""
    return {queue: state[1] if (state := queue_state(connection, queue)) else None for queue in queues}


def wait_consuming(
    broker_url: str, expected: dict[str, int], processes: ProcessGroup | None, *, timeout: float
) -> float:
    """The one readiness check for workers: each queue in `expected` has that many consumers. With
    `processes`, a process that ends meanwhile fails the wait at once, with its log."""
    started = time.monotonic()
    waiting = dict(expected)
    with Connection(broker_url) as connection:
        while waiting:
            if processes is not None:
                processes.check_alive()
            try:
                found = queue_consumers(connection, sorted(waiting))
                waiting = {q: n for q, n in waiting.items() if (found[q] or 0) < n}
            except connection.connection_errors:
                connection.close()  # the broker (or this node) is coming back; ask again
            if not waiting:
                break
            if time.monotonic() - started > timeout:
                logs = "".join(f"\n--- {n}\n{processes.log_tail(n, 15)}" for n in processes.procs) if processes else ""
                raise StackError(f"no consumers on {', '.join(sorted(waiting))} after {timeout:.0f}s{logs}")
            time.sleep(0.3)
    return time.monotonic() - started


def expected_consumers(services: list[str], per_service: int = 1) -> dict[str, int]:
    """Every queue the workers of `services` consume, with `per_service` consumers each (housekeeping: all)."""
    expected: dict[str, int] = {}
    for name in services:
        for queue in pipeline.service(name).consumed:
            expected[queue] = expected.get(queue, 0) + per_service
    return expected
