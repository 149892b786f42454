"""The bench's own stack: RabbitMQ, Redis (and PostgreSQL) on private ports, a fresh database under
its run directory, and the pipeline's processes started from their Procfile lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kombu import Connection

from bench.postgres import PostgresCluster
from bench.procstats import TreeSample, sample_tree
from devstack import brokers
from devstack.brokers import ManagedProcess, StackError, say
from devstack.config import ROOT, StackConfig
from devstack.supervisor import read_procfile, stop_groups

PYTHON = sys.executable
PIPELINE = ("orders", "inventory", "payments", "relay")
# The queues each pipeline worker consumes: its -Q task queues and, through the intake, its event queue.
CONSUMED = {
    "orders": ("orders.tasks", "eventbus.tasks", "orders.events-in"),
    "inventory": ("inventory.tasks", "inventory.events"),
    "payments": ("payments.tasks", "payments.events"),
}


@dataclass
class BenchStack:
    """Everything one bench run starts, all of it under `config.run_dir`, stopped by `stop()`."""

    config: StackConfig
    db: str = "sqlite"
    postgres_port: int = 5832
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    servers: dict[str, ManagedProcess] = field(default_factory=dict)
    postgres: PostgresCluster | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    _queries: Connection | None = None

    @property
    def log_dir(self) -> Path:
        return self.config.run_dir / "logs"

    @property
    def database_url(self) -> str:
        if self.db == "postgres":
            return f"postgres://postgres@127.0.0.1:{self.postgres_port}/bench"
        return f"sqlite:///{self.config.run_dir / 'bench.sqlite3'}"

    @property
    def env(self) -> dict[str, str]:
        """Environment of the bench process (set before Django loads) and of every child."""
        config = self.config
        return {
            "DJANGO_SETTINGS_MODULE": "orderproj.settings.local",
            # DEBUG keeps every SQL query in memory and logs more: not what a deployment runs.
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": self.database_url,
            **config.connection_env(),
            "CACHE_KEY_PREFIX": f"bench-{config.amqp_port}",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(PYTHON).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **self.overrides,
        }

    # --- servers and database

    def start_servers(self) -> None:
        """Start Redis, RabbitMQ (and PostgreSQL) from scratch; the run directory is wiped first."""
        config = self.config
        brokers.ensure_system_packages()
        ports = {
            "--redis-port": config.redis_port,
            "--amqp-port": config.amqp_port,
            "--management-port": config.management_port,
            "Erlang distribution (AMQP + 20000)": config.dist_port,
        }
        if self.db == "postgres":
            ports["--postgres-port"] = self.postgres_port
        brokers.check_ports_free(config, ports)
        shutil.rmtree(config.run_dir, ignore_errors=True)
        config.run_dir.mkdir(parents=True)
        say(f"bench: Redis on {config.redis_port}, RabbitMQ on {config.amqp_port} (data in {config.run_dir})")
        self.servers["redis"] = brokers.start_redis(config)
        self.servers["rabbitmq"] = brokers.start_rabbitmq(config)
        if self.db == "postgres":
            say(f"bench: PostgreSQL 15 on {self.postgres_port}")
            self.postgres = PostgresCluster(config.run_dir / "postgres", self.postgres_port)
            self.postgres.start()

    def migrate(self) -> None:
        subprocess.run(  # noqa: S603 (our own interpreter and manage.py)
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env={**os.environ, **self.env},
            check=True,
        )

    # --- processes

    def start(self, name: str, command: str) -> None:
        """Start a shell command line in its own session, as `make run`'s supervisor does."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(  # noqa: S603
                ["bash", "-c", f"exec {command}"],  # noqa: S607
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_pipeline(self) -> None:
        """One worker per service and the relay, each exactly as its Procfile line runs it."""
        specs = {spec.name: spec.command for spec in read_procfile(ROOT / "Procfile")}
        for name in PIPELINE:
            self.start(name, specs[name])
        self.wait_consuming({queue for name in CONSUMED for queue in CONSUMED[name]}, names=list(CONSUMED))

    def start_noop_workers(self, count: int, concurrency: int) -> list[str]:
        names = [f"noop{i}" for i in range(1, count + 1)]
        for name in names:
            self.start(
                name,
                f"celery -A bench.noop worker -Q bench.noop -n {name}@%h --concurrency {concurrency} -l WARNING",
            )
        return names

    def stop_procs(self, names: list[str] | None = None) -> None:
        names = list(self.procs) if names is None else names
        stop_groups([self.procs.pop(name) for name in names if name in self.procs], timeout=20)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # --- broker queries

    def queue_state(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of `queue`, straight from the broker (no statistics delay)."""
        if self._queries is None:
            self._queries = Connection(self.config.broker_url)
        try:
            _, messages, consumers = self._queries.default_channel.queue_declare(queue=queue, passive=True)
        except Exception:
            # A missing queue closes the channel; the next question gets a fresh connection.
            self._queries.release()
            self._queries = None
            raise
        return messages, consumers

    def wait_consuming(self, queues: set[str], *, names: list[str], timeout: float = 90) -> None:
        """Block until each queue has a consumer; fail with the log of a process that died meanwhile."""
        deadline = time.monotonic() + timeout
        waiting = set(queues)
        while waiting:
            self.check_alive()
            for queue in sorted(waiting):
                try:
                    if self.queue_state(queue)[1] > 0:
                        waiting.discard(queue)
                except Exception:  # noqa: S112 (not declared yet: the worker declares it when it starts)
                    continue
            if time.monotonic() > deadline:
                logs = "\n".join(self.log_tail(name) for name in names)
                raise StackError(f"no consumer on {', '.join(sorted(waiting))} after {timeout:.0f}s:\n{logs}")
            if waiting:
                time.sleep(0.3)

    def purge(self, queues: list[str]) -> None:
        with Connection(self.config.broker_url) as connection:
            for queue in queues:
                connection.default_channel.queue_purge(queue)

    # --- measurements

    def server_pids(self) -> dict[str, int]:
        pids = {name: server.proc.pid for name, server in self.servers.items()}
        if self.postgres is not None:
            pid_file = self.postgres.data_dir / "postmaster.pid"
            if pid_file.exists():
                pids["postgres"] = int(pid_file.read_text().split()[0])
        return pids

    def sample(self) -> dict[str, TreeSample]:
        """CPU and memory of every process the bench started, and of the servers, by name."""
        pids = {name: proc.pid for name, proc in self.procs.items()} | self.server_pids()
        samples = {name: sample_tree(pid) for name, pid in pids.items()}
        return {name: value for name, value in samples.items() if value is not None}

    # --- the end

    def stop(self) -> None:
        """Stop every process, then the servers; safe to call more than once."""
        self.stop_procs()
        if self._queries is not None:
            self._queries.release()
            self._queries = None
        if self.postgres is not None:
            try:
                self.postgres.stop()
            except StackError as error:
                print(f"bench: {error}", file=sys.stderr)
        if "rabbitmq" in self.servers:
            brokers.stop_rabbitmq(self.servers.pop("rabbitmq"), self.config)
        if "redis" in self.servers:
            self.servers.pop("redis").stop()
