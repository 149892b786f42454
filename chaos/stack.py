"""The chaos run's own stack, started by devstack: servers on private ports, a fresh database, N workers per
service and N relays, each a supervised child process that a fault may kill and that is restarted."""

from __future__ import annotations

import threading
from urllib.parse import quote

import requests

from devstack import brokers, pipeline
from devstack.config import StackConfig
from devstack.stack import Stack, expected_consumers
from eventbus.passwords import ADMIN

# Events no service subscribes to (captured, voided, released) are kept there, by design.
ARCHIVE_QUEUES = frozenset({"eventbus.unrouted"})
WORKER_OPTIONS = {"concurrency": 2, "extra": ("--without-gossip", "--without-mingle")}


class ChaosStack(Stack):
    """A devstack `Stack` with the chaos run's process names, kills that orphan pool children, and the
    management API's view of the queues."""

    def __init__(self, config: StackConfig, *, workers_per_service: int = 2, relays: int = 1) -> None:
        overrides = {"DJANGO_DEBUG": "false", "CACHE_KEY_PREFIX": f"chaos-{config.amqp_port}"}
        super().__init__(config, fresh=True, overrides=overrides)
        self.workers_per_service = workers_per_service
        self.relays = relays
        # Held while a fault kills and restarts a process, so the crash watch does not restart it too.
        self.lock = threading.Lock()

    @property
    def restarts(self) -> dict[str, int]:
        return self.processes.restarts

    def services(self) -> list[str]:
        return [svc.name for svc in pipeline.services()]

    def worker_names(self, service: str | None = None) -> list[str]:
        services = [service] if service else self.services()
        return [f"{name}-{i}" for name in services for i in range(1, self.workers_per_service + 1)]

    def relay_names(self) -> list[str]:
        return [f"relay-{i}" for i in range(1, self.relays + 1)]

    def start_all(self) -> None:
        for name in self.worker_names():
            self.start_worker(name.rsplit("-", 1)[0], name=name, **WORKER_OPTIONS)
        for name in self.relay_names():
            self.start_relay(name, poll=0.5)

    def expected_consumers(self, service: str | None = None) -> dict[str, int]:
        """Consumers per queue once every worker (of `service`) consumes again."""
        everyone = expected_consumers(self.services(), self.workers_per_service)
        if service is None:
            return everyone
        return {queue: everyone[queue] for queue in pipeline.service(service).consumed}

    def kill(self, name: str) -> list[int]:
        """SIGKILL the process itself (not its pool children, which a real crash would orphan too);
        return the orphans. Their group is reaped by `reap_orphans`, once a replacement runs."""
        return self.processes.kill(name, whole_group=False)

    def restart(self, name: str) -> None:
        self.processes.restart(name)

    def reap_orphans(self) -> None:
        self.processes.reap_orphans()

    def exited(self) -> dict[str, int]:
        return self.processes.exited()

    def log_tail(self, name: str, lines: int = 30) -> str:
        return self.processes.log_tail(name, lines)

    def rabbitmqctl(self, *args: str, node: int = 0):
        return brokers.rabbitmqctl(self.config, *args, node=self.config.nodes[node], timeout=120)

    def queues(self) -> list[dict]:
        """Every queue of the vhost with its counts, from the management API of the first node that answers."""
        error: Exception | None = None
        for node in self.config.nodes:
            try:
                response = requests.get(
                    f"http://{self.config.host}:{node.management_port}/api/queues/{quote('/', safe='')}",
                    params={"columns": "name,messages,messages_ready,messages_unacknowledged,consumers,leader"},
                    auth=(ADMIN, self.config.credentials.password(ADMIN)),
                    timeout=10,
                )
                response.raise_for_status()
                return response.json()
            except requests.RequestException as failure:
                error = failure
        assert error is not None
        raise error
