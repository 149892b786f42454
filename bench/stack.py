"""The bench's own stack, started by devstack: servers on private ports, a fresh database under its run
directory, the pipeline's processes, and the measurements the bench takes of them."""

from __future__ import annotations

import sys

from kombu import Connection

from bench.plain import QUEUE_NAMES as PLAIN_QUEUES
from bench.procstats import TreeSample, sample_tree
from devstack import pipeline
from devstack.brokers import StackError
from devstack.config import StackConfig
from devstack.stack import Stack, expected_consumers, queue_state

RELAY = "relay"
OTLP_SINK = "otlp-sink"


def consumed() -> dict[str, tuple[str, ...]]:
    """The queues each pipeline worker consumes: its task queues and, through the intake, its event queue."""
    return {svc.name: svc.consumed for svc in pipeline.services()}


def pipeline_names() -> list[str]:
    """The processes of the pipeline run: one worker per service and the relay."""
    return [*consumed(), RELAY]


class BenchStack(Stack):
    """A devstack `Stack` with the bench's measurements: queue depths, CPU and memory per process."""

    def __init__(self, config: StackConfig, *, overrides: dict[str, str] | None = None) -> None:
        # DEBUG keeps every SQL query in memory and logs more: not what a deployment runs.
        env = {"DJANGO_DEBUG": "false", "CACHE_KEY_PREFIX": f"bench-{config.amqp_port}", "LOG_LEVEL": "WARNING"}
        super().__init__(config, fresh=True, overrides={**env, **(overrides or {})})
        self._queries: Connection | None = None

    def start_pipeline(self, *, env: dict[str, str] | None = None) -> None:
        """One worker per service and the relay, as `make run` starts them (with `env` added, if given)."""
        shared = dict(self.processes.env)
        self.processes.env.update(env or {})
        try:
            for name in consumed():
                self.start_worker(name, loglevel="WARNING")
            self.start_relay(RELAY)
        finally:
            self.processes.env.clear()
            self.processes.env.update(shared)
        self.wait_consuming(expected_consumers(list(consumed())))

    def start_otlp_sink(self, port: int) -> str:
        """A process that takes OTLP/HTTP exports on `port` and discards them (bench/otlp_sink.py)."""
        self.processes.start(OTLP_SINK, [sys.executable, "-m", "bench.otlp_sink", str(port)])
        self.wait_for_port(OTLP_SINK, port, timeout=30)  # before any process exports: its first spans would be lost
        return OTLP_SINK

    def start_noop_workers(self, count: int, concurrency: int) -> list[str]:
        names = [f"noop{i}" for i in range(1, count + 1)]
        for name in names:
            argv = ["celery", "-A", "bench.noop", "worker", "-Q", "bench.noop", "-n", f"{name}@%h",
                    "--concurrency", str(concurrency), "-l", "WARNING"]  # fmt: skip
            self.processes.start(name, argv)
        return names

    def start_plain_workers(self, concurrency: int = 2) -> list[str]:
        """One worker per queue of the plain Celery saga, with the project's Celery settings (bench.plain.app).
        They connect as the stack's administrator, as the bench does: the pipeline's users may touch only
        their own queues, and the plain saga is one application on one broker user."""
        names = []
        for queue in PLAIN_QUEUES:
            name = queue.replace(".", "-")
            argv = [pipeline.PYTHON, "-m", "celery", "-A", "bench.plain.app", "worker", "-Q", queue, "-n", f"{name}@%h",
                    "--concurrency", str(concurrency), "-l", "WARNING", "-E"]  # fmt: skip
            self.processes.start(name, argv)
            names.append(name)
        self.wait_consuming(dict.fromkeys(PLAIN_QUEUES, 1))
        return names

    def stop_procs(self, names: list[str] | None = None) -> None:
        self.processes.stop(names)

    def check_alive(self) -> None:
        self.processes.check_alive()

    def log_tail(self, name: str, lines: int = 30) -> str:
        return self.processes.log_tail(name, lines)

    @property
    def procs(self):
        return self.processes.procs

    # --- broker queries

    def queue_state(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of `queue`, straight from the broker (no statistics delay)."""
        if self._queries is None:
            self._queries = Connection(self.config.broker_url)
        state = queue_state(self._queries, queue)
        if state is None:
            raise StackError(f"queue {queue} does not exist")
        return state

    def purge(self, queues: list[str]) -> None:
        with Connection(self.config.broker_url) as connection:
            for queue in queues:
                connection.default_channel.queue_purge(queue)

    # --- measurements

    def server_pids(self) -> dict[str, int]:
        # The bench runs one RabbitMQ node, reported as `rabbitmq`.
        pids = {name.removesuffix("-1"): server.proc.pid for name, server in self.servers.items()}
        if self.postgres is not None and (pid := self.postgres.pid()) is not None:
            pids["postgres"] = pid
        return pids

    def sample(self) -> dict[str, TreeSample]:
        """CPU and memory of every process the bench started, and of the servers, by name."""
        pids = {name: proc.pid for name, proc in self.procs.items()} | self.server_pids()
        samples = {name: sample_tree(pid) for name, pid in pids.items()}
        return {name: value for name, value in samples.items() if value is not None}

    def stop(self) -> None:
        if self._queries is not None:
            self._queries.release()
            self._queries = None
        super().stop()
