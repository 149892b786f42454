"""The chaos run's own stack: RabbitMQ and Redis on private ports, a fresh SQLite file, two workers per
service and the relay, each a supervised child process that a fault may kill and that is restarted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import requests

from devstack import brokers
from devstack.brokers import ManagedProcess, say
from devstack.config import ROOT, StackConfig
from devstack.supervisor import stop_groups

PYTHON = sys.executable
SERVICE_QUEUES = {
    "orders": "orders.tasks,eventbus.tasks",
    "inventory": "inventory.tasks",
    "payments": "payments.tasks",
}
# What each worker consumes besides its -Q task queues: the service's event queue (the intake).
EVENT_QUEUES = {"orders": "orders.events-in", "inventory": "inventory.events", "payments": "payments.events"}
# Events no service subscribes to (captured, voided, released) are kept there, by design.
ARCHIVE_QUEUES = frozenset({"eventbus.unrouted"})


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (a worker's pool processes), read from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def group_alive(pgid: int) -> bool:
    """Whether any process still belongs to process group `pgid`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            # Fields after the command name, which may hold spaces: state, ppid, pgrp, ...
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                return True
    return False


@dataclass
class Stack:
    """Brokers, database and supervised processes of one chaos run, all under `config.run_dir`."""

    config: StackConfig
    workers_per_service: int = 2
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    orphan_groups: set[int] = field(default_factory=set)
    restarts: dict[str, int] = field(default_factory=dict)
    # Held while a fault kills and restarts a process, so the crash watch does not restart it too.
    lock: threading.Lock = field(default_factory=threading.Lock)
    _servers: list[ManagedProcess] = field(default_factory=list)

    @property
    def database_path(self) -> Path:
        return self.config.run_dir / "chaos.sqlite3"

    @property
    def log_dir(self) -> Path:
        return self.config.run_dir / "logs"

    @property
    def env(self) -> dict[str, str]:
        """Environment of this process (set before Django loads) and of every child."""
        config = self.config
        return {
            "DJANGO_SETTINGS_MODULE": "orderproj.settings.local",
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": f"sqlite:///{self.database_path}",
            **config.connection_env(),
            "CACHE_KEY_PREFIX": f"chaos-{config.amqp_port}",
            "PYTHONUNBUFFERED": "1",
        }

    # --- brokers and database

    def start_brokers(self) -> None:
        """Start RabbitMQ and Redis from scratch (the run directory is wiped first)."""
        config = self.config
        brokers.ensure_system_packages()
        brokers.check_ports_free(
            config,
            {"--redis-port": config.redis_port, "--amqp-port": config.amqp_port,
             "--management-port": config.management_port, "Erlang distribution (AMQP + 20000)": config.dist_port},
        )  # fmt: skip
        shutil.rmtree(config.run_dir, ignore_errors=True)
        config.run_dir.mkdir(parents=True)
        say(f"chaos: Redis on {config.redis_port}, RabbitMQ on {config.amqp_port} (data in {config.run_dir})")
        self._servers.append(brokers.start_redis(config))
        self._servers.append(brokers.start_rabbitmq(config))

    def migrate(self) -> None:
        subprocess.run(  # noqa: S603 (our own interpreter and manage.py)
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env={**os.environ, **self.env},
            check=True,
        )

    def rabbitmqctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return brokers.rabbitmqctl(self.config, *args, timeout=120)

    # --- supervised processes

    def worker_names(self) -> list[str]:
        return [f"{service}-{i}" for service in SERVICE_QUEUES for i in range(1, self.workers_per_service + 1)]

    def _argv(self, name: str) -> list[str]:
        if name == "relay":
            return [PYTHON, "manage.py", "relay", "--poll", "0.5"]
        service = name.rsplit("-", 1)[0]
        return [PYTHON, "-m", "celery", "-A", "orderproj", "worker", "-Q", SERVICE_QUEUES[service], "-n", f"{name}@%h",
                "--concurrency", "2", "-l", "INFO", "--without-gossip", "--without-mingle"]  # fmt: skip

    def start(self, name: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 (our own interpreter)
                self._argv(name),
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def start_all(self) -> None:
        for name in [*self.worker_names(), "relay"]:
            self.start(name)

    def restart(self, name: str) -> None:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self.start(name)

    def kill(self, name: str) -> list[int]:
        """SIGKILL the process itself (not its pool children, which a real crash would orphan too);
        return the orphans. Their group is reaped later, once a replacement runs."""
        proc = self.procs[name]
        orphans = child_pids(proc.pid)
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        if orphans:
            self.orphan_groups.add(proc.pid)
        return orphans

    def reap_orphans(self) -> None:
        for pgid in list(self.orphan_groups):
            # A process group id is never reused while the group has members, so these are ours.
            if group_alive(pgid):
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            self.orphan_groups.discard(pgid)

    def exited(self) -> dict[str, int]:
        """Processes that ended by themselves: name -> exit code."""
        return {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # --- RabbitMQ management API

    def queues(self) -> list[dict]:
        response = requests.get(
            f"{self.config.management_url}/api/queues/{quote('/', safe='')}",
            params={"columns": "name,messages,messages_ready,messages_unacknowledged,consumers"},
            auth=("guest", "guest"),
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def missing_consumers(self) -> list[str]:
        """Queues with fewer consumers than workers_per_service; [] once every worker consumes."""
        expected = {
            q for service, queues in SERVICE_QUEUES.items() for q in [*queues.split(","), EVENT_QUEUES[service]]
        }
        try:
            counts = {q["name"]: q.get("consumers", 0) for q in self.queues()}
        except requests.RequestException:
            return sorted(expected)
        return sorted(q for q in expected if counts.get(q, 0) < self.workers_per_service)

    def wait_until_consuming(self, timeout: float) -> float:
        """Block until every queue has all its consumers; return the seconds it took."""
        started = time.monotonic()
        while missing := self.missing_consumers():
            for name, code in self.exited().items():
                raise RuntimeError(f"{name} exited with {code} while starting:\n{self.log_tail(name)}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"no consumers on {', '.join(missing)} after {timeout:.0f}s")
            time.sleep(0.5)
        return time.monotonic() - started

    # --- the end

    def stop(self) -> None:
        """Stop every process, then the brokers; safe to call more than once."""
        stop_groups(list(self.procs.values()), timeout=15)
        self.procs.clear()
        self.reap_orphans()
        while self._servers:
            server = self._servers.pop()
            if server.name == "rabbitmq":
                brokers.stop_rabbitmq(server, self.config)
            else:
                server.stop()
