"""One chaos run: workers and relay up, orders streamed while faults fire, quiet, then the checks."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests
from django.db import DatabaseError

from chaos.checks import Progress, check, reconnect, undrained
from chaos.faults import Injector, schedule
from chaos.report import summary, write_verdict
from chaos.stack import ChaosStack
from chaos.workload import catalogue_ready, place, plan, products_create
from devstack.brokers import say
from orders.models import Order

REFUSED_BACKOFF = 1.0  # seconds before the next order once the database refused one


@dataclass(frozen=True)
class Options:
    orders: int
    seed: int
    rounds: int
    rate: float
    max_pending: int
    quiet_timeout: float
    outage: tuple[float, float]
    duplicates: int
    read_only: float
    kinds: list[str]


@dataclass
class Clock:
    """Seconds since the stream started, and a progress line every few seconds."""

    zero: float = field(default_factory=time.monotonic)
    every: float = 5.0
    _last: float = 0.0

    def now(self) -> float:
        return time.monotonic() - self.zero

    def tick(self, stage: str, placed: int, total: int, faults: int) -> None:
        if self.now() - self._last < self.every:
            return
        self._last = self.now()
        p = Progress.read(placed)
        if p is None:
            print(f"chaos: +{self.now():6.1f}s {stage}: placed {placed}/{total}, database away, faults {faults}",
                  flush=True)  # fmt: skip
            return
        print(f"chaos: +{self.now():6.1f}s {stage}: placed {placed}/{total}, final {p.final} (confirmed "
              f"{p.confirmed}), pending {p.pending}, settling {p.unsettled}, unsent {p.unsent}, faults {faults}",
              flush=True)  # fmt: skip


@dataclass
class Supervision:
    """Restarts a process that ended by itself (as a supervisor would) and remembers that it did."""

    stack: ChaosStack
    clock: Clock
    crashes: list[str] = field(default_factory=list)

    def watch(self) -> None:
        if not self.stack.lock.acquire(blocking=False):
            return  # a fault is killing and restarting a process right now
        try:
            for name, code in self.stack.exited().items():
                self.crashes.append(f"+{self.clock.now():.1f}s {name} exited with {code}")
                print(f"chaos: {name} exited by itself with {code}; restarting it\n{self.stack.log_tail(name, 10)}")
                self.stack.restart(name)
        finally:
            self.stack.lock.release()


def run(stack: ChaosStack, options: Options) -> int:
    """Start the processes, stream the orders with the faults, wait for quiet, check; 0 when it all held."""
    started = time.monotonic()
    say(f"chaos: starting {len(stack.worker_names())} workers and {stack.relays} relay(s)")
    stack.start_all()
    stack.wait_consuming(stack.expected_consumers(), timeout=300)
    stock = products_create(orders=options.orders)
    _wait(lambda: catalogue_ready(list(stock)), 120, "the orders catalogue to learn the products")
    planned = plan(orders=options.orders, rng=seeded(options.seed, "orders"))
    moments = schedule(orders=options.orders, rounds=options.rounds, rng=seeded(options.seed, "faults"),
                       kinds=options.kinds)  # fmt: skip
    clock = Clock()
    setup = time.monotonic() - started
    say(f"chaos: stack up in {setup:.1f}s; streaming {options.orders} orders, {sum(map(len, moments.values()))} faults")
    injector = Injector(stack, seeded(options.seed, "injector"), clock.zero, options.outage, options.duplicates,
                        options.read_only)  # fmt: skip
    supervision = Supervision(stack, clock)
    injector.start()
    accepted, refused = [], []

    def tick(stage: str) -> None:
        clock.tick(stage, len(accepted), options.orders, len(injector.faults))

    for index, order in enumerate(planned, 1):
        _pace(clock, index, options, supervision, lambda: tick("placing"))
        order_id = place(order)
        if order_id is None:
            refused.append(datetime.now(UTC))
            reconnect()
            # A client backs off: the rest of the stream must not be refused in the seconds the database is away.
            time.sleep(REFUSED_BACKOFF)
        else:
            accepted.append(order_id)
        for kind in moments.get(index, []):
            injector.trigger(kind)
    placing = clock.now()
    injector.finish(on_wait=lambda: (supervision.watch(), tick("faults")))
    quiet = _wait_for_quiet(stack, options, supervision, accepted=len(accepted), tick=lambda: tick("settling"))
    verdict = check(
        accepted=accepted,
        refused=refused,
        stock=stock,
        faults=injector.faults,
        poison=injector.poison,
        markers=injector.markers,
        queues=stack.queues(),
        relays_restarted=sum(stack.restarts.get(name, 0) for name in stack.relay_names()),
    )
    timings = {"stack": setup, "placing": placing, "quiet": quiet, "total": time.monotonic() - started}
    summary(verdict, seed=options.seed, orders=options.orders, faults=injector.faults, crashes=supervision.crashes,
            stack=stack, timings=timings)  # fmt: skip
    write_verdict(stack.config.run_dir / "verdict.json", verdict, seed=options.seed, orders=options.orders,
                  faults=injector.faults, crashes=supervision.crashes)  # fmt: skip
    return 0 if verdict.violations == 0 else 1


def seeded(seed: int, purpose: str) -> random.Random:
    """A generator of its own per purpose, so that the order mix does not shift when faults change."""
    return random.Random(f"{seed}-{purpose}")  # noqa: S311 (reproducible chaos, not cryptography)


def _pace(clock: Clock, index: int, options: Options, supervision: Supervision, tick: Callable[[], None]) -> None:
    """Hold the stream to `rate` orders a second and at most `max_pending` undecided orders."""
    while True:
        supervision.watch()
        tick()
        ahead = (index - 1) / options.rate - clock.now()
        if ahead > 0:
            time.sleep(min(ahead, 1.0))
            continue
        if index % 20 or _pending() < options.max_pending:
            return
        time.sleep(0.5)


def _pending() -> int:
    """Undecided orders; none while the database is away (placing then finds it refusing, and counts that)."""
    try:
        return Order.objects.filter(status=Order.Status.PENDING).count()
    except DatabaseError:
        reconnect()
        return 0


def _wait_for_quiet(
    stack: ChaosStack, options: Options, supervision: Supervision, *, accepted: int, tick: Callable[[], None]
) -> float:
    """Wait until every order is decided and settled, nothing waits in the outbox, and every queue is empty
    on two readings of the broker's statistics; give up after `quiet_timeout` seconds without progress."""
    best, progressed, quiet_since = None, time.monotonic(), None
    while True:
        supervision.watch()
        tick()
        progress = Progress.read(accepted)  # None while the database is away: no progress then
        state = progress and (progress.final, -progress.unsettled, -progress.unsent)
        if state is not None and state != best:
            best, progressed = state, time.monotonic()
        if progress is not None and progress.quiet and _drained(stack):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 6:  # the management API refreshes its counts every 5 s
                return supervision.clock.now()
        else:
            quiet_since = None
        if time.monotonic() - progressed > options.quiet_timeout:
            print(f"chaos: no progress for {options.quiet_timeout:.0f}s; checking the state as it is", flush=True)
            return supervision.clock.now()
        time.sleep(1)


def _drained(stack: ChaosStack) -> bool:
    try:
        return not undrained(stack.queues())
    except requests.RequestException:
        return False


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
