"""The faults: killed processes, broker, Redis and database outages, duplicate deliveries and poison, each at
a seeded moment.

A fault fires when the order stream reaches a seeded position; one thread injects them in turn, so
the stream keeps flowing (and orders keep being accepted, or refused while the database is away) during
an outage.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.db import close_old_connections
from kombu import Connection

from chaos.kinds import KINDS
from chaos.poison import PICKLE, Poison, order_placed, poison_batch
from chaos.stack import ARCHIVE_QUEUES, ChaosStack
from devstack.processes import child_pids
from devstack.stack import wait_consuming
from eventbus.envelope import CONTENT_TYPE
from eventbus.identities import publisher_of
from eventbus.models import OutboxMessage
from eventbus.passwords import ADMIN

logger = logging.getLogger(__name__)
CHATTR = "/usr/bin/chattr"  # e2fsprogs, on every Debian system
# The queues bound to `orders.events` with `order.placed`: each takes its own copy of every poison message.
POISON_QUEUES = ("inventory.events", "payments.events")


@dataclass
class Fault:
    kind: str
    started: datetime
    ended: datetime
    offset: float
    detail: str = ""
    failed: bool = False


def schedule(*, orders: int, rounds: int, rng: random.Random, kinds: list[str]) -> dict[int, list[str]]:
    """Each of `kinds` `rounds` times, at seeded positions between 5% and 85% of the stream."""
    moments: dict[int, list[str]] = {}
    for kind in KINDS:
        # Every kind draws its positions, injected or not, so that choosing kinds moves no other fault.
        positions = [rng.randint(max(1, orders // 20), max(2, orders * 85 // 100)) for _ in range(rounds)]
        if kind in kinds:
            for position in positions:
                moments.setdefault(position, []).append(kind)
    return moments


@dataclass
class Injector:
    """Runs faults one at a time on its own thread, recording what it did and when."""

    stack: ChaosStack
    rng: random.Random
    clock_zero: float
    outage: tuple[float, float] = (4.0, 8.0)
    duplicates: int = 50
    read_only: float = 10.0
    faults: list[Fault] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None

    @property
    def markers(self) -> list[Path]:
        return [self.stack.config.run_dir / f"unpickled-{p.token}" for p in self.poison if p.content_type == PICKLE]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="faults", daemon=True)
        self._thread.start()

    def trigger(self, kind: str) -> None:
        self._queue.put(kind)

    def finish(self, on_wait: Callable[[], object]) -> None:
        """Wait for every triggered fault to be injected (and its process back), calling `on_wait` meanwhile."""
        self._queue.put(None)
        while self._thread is not None and self._thread.is_alive():
            on_wait()
            self._thread.join(0.5)

    def _run(self) -> None:
        while (kind := self._queue.get()) is not None:
            # A database restart breaks this thread's connection too: check it before each fault.
            close_old_connections()
            started, offset = datetime.now(UTC), time.monotonic() - self.clock_zero
            try:
                detail, failed = getattr(self, "_" + kind.replace("-", "_"))(), False
            except Exception as error:
                logger.exception("fault %s could not be injected", kind)
                detail, failed = f"INJECTION FAILED: {type(error).__name__}: {error}", True
            self.faults.append(Fault(kind, started, datetime.now(UTC), offset, detail, failed))
            print(f"chaos: +{offset:6.1f}s {kind}: {detail}", flush=True)
        close_old_connections()

    # --- the faults

    def _kill_pool_child(self) -> str:
        name = self.rng.choice(self.stack.worker_names())
        children = child_pids(self.stack.processes.pid(name))
        if not children:
            return f"{name} had no pool process to kill"
        victim = self.rng.choice(sorted(children))
        with suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return f"SIGKILL pool process {victim} of {name}; the worker replaces it"

    def _kill_worker(self) -> str:
        name = self.rng.choice(self.stack.worker_names())
        with self.stack.lock:
            orphans = self.stack.kill(name)
            time.sleep(1)  # a supervisor notices, then restarts
            self.stack.restart(name)
        back = self._wait_consuming(self.stack.expected_consumers(name.rsplit("-", 1)[0]), timeout=120)
        self.stack.reap_orphans()
        return f"SIGKILL {name} (orphaning pool processes {orphans}); restarted, answering again after {back:.1f}s"

    def _kill_relay(self) -> str:
        name = self.rng.choice(self.stack.relay_names())
        with self.stack.lock:
            self.stack.kill(name)
            pause = self.rng.uniform(0.5, 3)
            time.sleep(pause)
            self.stack.restart(name)
        return f"SIGKILL {name}; restarted after {pause:.1f}s"

    def _broker_restart(self) -> str:
        down_for = self.rng.uniform(*self.outage)
        stopped = self.stack.rabbitmqctl("stop_app")
        if stopped.returncode != 0:
            raise RuntimeError(f"rabbitmqctl stop_app: {stopped.stdout}{stopped.stderr}")
        down_at = time.monotonic()
        time.sleep(down_for)
        started = self.stack.rabbitmqctl("start_app")
        if started.returncode != 0:
            raise RuntimeError(f"rabbitmqctl start_app: {started.stdout}{started.stderr}")
        outage = time.monotonic() - down_at
        back = self._wait_consuming(self.stack.expected_consumers(), timeout=180)
        return f"rabbitmqctl stop_app; start_app after {outage:.1f}s; every worker answering again {back:.1f}s later"

    def _kill_rabbit_node(self) -> str:
        index, busiest = self._busiest_leader()
        node, server = self.stack.config.nodes[index], self.stack.rabbit_server(index)
        down_for = self.rng.uniform(*self.outage)
        with suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)
        down_at = time.monotonic()
        time.sleep(down_for)
        # A killed node leaves its pid file behind, and `rabbitmqctl wait` would wait on the dead pid.
        (node.data_dir / "rabbit.pid").unlink(missing_ok=True)
        self.stack.start_rabbit_node(index)
        outage = time.monotonic() - down_at
        back = self._wait_consuming(self.stack.expected_consumers(), timeout=180)
        which = "the only node" if self.stack.config.rabbitmq_nodes == 1 else f"node {index + 1}"
        return (f"SIGKILL {which} {node.name} (leader of {busiest}); started again after {outage:.1f}s; every "
                f"worker consuming again {back:.1f}s later")  # fmt: skip

    def _postgres_restart(self) -> str:
        postgres = self.stack.postgres
        if postgres is None:
            raise RuntimeError("postgres-restart needs --db postgres")
        down_for = self.rng.uniform(*self.outage)
        pid = postgres.pid()
        postgres.stop("immediate")
        down_at = time.monotonic()
        time.sleep(down_for)
        postgres.start_server()
        return f"pg_ctl stop -m immediate (postmaster {pid}); started again after {time.monotonic() - down_at:.1f}s"

    def _redis_kill(self) -> str:
        server = self.stack.servers["redis"]
        pid = server.proc.pid
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        server.proc.wait(30)
        down_at = time.monotonic()
        time.sleep(self.rng.uniform(*self.outage))
        self.stack.start_redis_again()
        return f"SIGKILL redis-server {pid}; started again after {time.monotonic() - down_at:.1f}s"

    def _db_read_only(self) -> str:
        refuse = self._postgres_read_only if self.stack.config.db == "postgres" else self._sqlite_read_only
        how = refuse(True)
        try:
            time.sleep(self.read_only)
        finally:
            refuse(False)
        return f"database refused writes for {self.read_only:.0f}s ({how}); writable again"

    def _postgres_read_only(self, on: bool) -> str:
        """Make every session's next transaction read only, or writable again (once the configuration
        reloads); return how."""
        postgres = self.stack.postgres
        assert postgres is not None
        # ALTER SYSTEM refuses to run in a transaction block, so it goes on its own, then the reload.
        postgres.sql(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
        postgres.sql("SELECT pg_reload_conf()")
        return "ALTER SYSTEM SET default_transaction_read_only = on"

    def _sqlite_read_only(self, on: bool) -> str:
        """Make the SQLite file and its WAL read only, or writable again; return how. Root ignores file
        modes, so as root the files are made immutable instead. Never the -shm file: every connection maps
        it into memory, and a write to an immutable mapping kills the process with SIGBUS."""
        database = self.stack.config.run_dir / "db.sqlite3"
        if os.geteuid() == 0:
            files = [str(path) for path in (database, database.with_name("db.sqlite3-wal")) if path.exists()]
            subprocess.run([CHATTR, "+i" if on else "-i", *files], check=True, capture_output=True)  # noqa: S603
            return "chattr +i on the file and its WAL"
        for path in (database, database.with_name("db.sqlite3-wal"), database.with_name("db.sqlite3-shm")):
            if path.exists():
                path.chmod(0o444 if on else 0o600)
        return "chmod 0444 on the file, its WAL and shared memory"

    def _duplicates(self) -> str:
        ids = list(OutboxMessage.objects.filter(sent_at__isnull=False).values_list("id", flat=True))
        rows = list(OutboxMessage.objects.filter(id__in=self.rng.sample(ids, min(self.duplicates, len(ids)))))
        close_old_connections()
        for user in sorted({publisher_of(row.event_type) for row in rows}):  # each as its producer, as the relay does
            with self._connection(user) as connection:
                producer = connection.Producer()
                for row in (row for row in rows if publisher_of(row.event_type) == user):
                    producer.publish(
                        json.dumps(row.body, separators=(",", ":")).encode(),
                        exchange=row.exchange,
                        routing_key=row.routing_key,
                        content_type=CONTENT_TYPE,
                        content_encoding="utf-8",
                        delivery_mode=2,
                        retry=True,
                        user_id=user,
                    )
        kinds = sorted({row.event_type.split(".")[1] for row in rows})
        return f"re-published {len(rows)} already-sent events raw ({', '.join(kinds)})"

    def _poison(self) -> str:
        batch = self._poison_batch(f"chaos-poison-{len(self.poison) // 4 + 1}-{uuid.uuid4().hex[:8]}")
        with self._connection() as connection:
            producer = connection.Producer()
            for item in batch:
                producer.publish(
                    item.body,
                    exchange="orders.events",
                    routing_key="order.placed",
                    content_type=item.content_type,
                    content_encoding="binary" if item.content_type == PICKLE else "utf-8",
                    delivery_mode=2,
                    retry=True,
                )
        self.poison += batch
        return f"published {len(batch)} poison messages ({', '.join(p.what for p in batch)}) to orders.events"

    def _poison_batch(self, token: str) -> list[Poison]:
        # No copy of the event is ever handled (each is poison), so its payment token needs no real seal.
        unsealed = "sealed:x"
        event = order_placed(event_id=f"{token}-valid", order_id=str(uuid.uuid4()), sku="P001", payment_token=unsealed)
        return poison_batch(token=token, event=event, marker_dir=self.stack.config.run_dir)

    def _busiest_leader(self) -> tuple[int, str]:
        """The node leading the queue with the most messages (the archive of unsubscribed events aside),
        and that queue."""
        nodes = {node.name: node.index for node in self.stack.config.nodes}
        led = [q for q in self.stack.queues() if q.get("leader") in nodes and q["name"] not in ARCHIVE_QUEUES]
        if not led:
            index = self.rng.randrange(len(nodes))
            return index, "no quorum queue"
        busiest = max(led, key=lambda q: q.get("messages") or 0)
        return nodes[busiest["leader"]], f"{busiest['name']}, {busiest.get('messages') or 0} messages"

    def _wait_consuming(self, expected: dict[str, int], timeout: float) -> float:
        """Block until the workers consume again (a crashed process is the supervision's business)."""
        return wait_consuming(self.stack.config.broker_url, expected, None, timeout=timeout)

    def _connection(self, user: str = ADMIN) -> Connection:
        """Poison comes from the administrator: it is filed as poison before anyone asks who sent it."""
        return Connection(self.stack.broker_url_as(user), transport_options={"confirm_publish": True})
