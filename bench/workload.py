"""Orders through the real pipeline: saturation, open-loop latency and a long memory run.

Imported once Django is set up: orders are placed with `orders.services.order_place` in this
process, against the database the workers use, and followed by polling their status.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import connections
from django.db.models import Max, Min
from django.utils import timezone
from hdrh.histogram import HdrHistogram

from bench.procstats import self_cpu_seconds
from bench.stack import BenchStack, consumed
from eventbus.models import OutboxMessage
from inventory.models import Product, Reservation
from orders.models import CatalogProduct, Order
from orders.services import LineRequest, order_place
from payments.models import Payment

STOCK = 10**9
PROGRESS_EVERY = 5.0
TOKEN = "tok_visa"  # noqa: S105 (the demo gateway's documented test token)


class BenchError(RuntimeError):
    """A phase could not finish: orders stopped moving, or a process died."""


def seed_products(count: int) -> list[str]:
    """Products with plenty of stock, written to inventory and to the orders catalogue directly
    (as the ProductChanged events would leave them), before any worker starts."""
    skus = [f"B{i:03d}" for i in range(1, count + 1)]
    prices = {sku: Decimal(f"{5 + (i * 7) % 95}.50") for i, sku in enumerate(skus)}
    Product.objects.bulk_create(
        Product(sku=sku, name=f"Bench product {sku}", price=prices[sku], stock_on_hand=STOCK, revision=1)
        for sku in skus
    )
    CatalogProduct.objects.bulk_create(
        CatalogProduct(sku=sku, name=f"Bench product {sku}", price=prices[sku], revision=1) for sku in skus
    )
    return skus


@dataclass
class OrderMix:
    """A seeded stream of orders of 1 to 4 distinct products, 1 to 3 of each, paid with `tok_visa`, placed
    with `place_order` (the pipeline's order_place, or the plain saga's)."""

    skus: list[str]
    seed: int
    place_order: Callable[..., Order] = order_place
    placed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 (a reproducible workload, not a secret)

    def next_order(self) -> Callable[[], Order]:
        """The next order of the stream, to be placed by calling the result (from any thread)."""
        lines = [LineRequest(sku, self.rng.randint(1, 3)) for sku in self.rng.sample(self.skus, self.rng.randint(1, 4))]
        self.placed += 1
        email = f"bench{self.placed}@example.com"
        return lambda: self.place_order(customer_email=email, payment_token=TOKEN, items=lines)

    def place(self) -> Order:
        return self.next_order()()


def histogram(values_ms: list[float]) -> HdrHistogram:
    """Values in milliseconds, recorded in microseconds with 3 significant digits, up to 10 minutes."""
    hist = HdrHistogram(1, 600_000_000, 3)
    for value in values_ms:
        hist.record_value(max(1, min(600_000_000, round(value * 1000))))
    return hist


def summary(hist: HdrHistogram) -> dict[str, float]:
    ms = {f"p{p:g}_ms": hist.get_value_at_percentile(p) / 1000 for p in (50, 90, 95, 99, 99.9)}
    return {
        "count": hist.get_total_count(),
        **ms,
        "max_ms": hist.get_max_value() / 1000,
        "mean_ms": round(hist.get_mean_value() / 1000, 3),
    }


class Progress:
    """Prints a line at most every few seconds during a long phase."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= PROGRESS_EVERY

    def say(self, message: str) -> None:
        self.last = time.monotonic()
        print(f"    {self.label} [{self.last - self.started:5.0f}s] {message}", flush=True)


def decided_since(since: datetime) -> int:
    return Order.objects.filter(created_at__gte=since).exclude(status=Order.Status.PENDING).count()


def wait_decided(stack: BenchStack, *, since: datetime, expected: int, stall_timeout: float, progress: Progress) -> int:
    """Poll until `expected` orders placed since `since` are decided or none moved for `stall_timeout`."""
    best, moved = -1, time.monotonic()
    while True:
        decided = decided_since(since)
        if decided >= expected:
            return decided
        if decided > best:
            best, moved = decided, time.monotonic()
        elif time.monotonic() - moved > stall_timeout:
            return decided
        stack.check_alive()
        if progress.due():
            progress.say(f"decided {decided}/{expected}")
        time.sleep(0.2)


def wait_quiet(stack: BenchStack, *, timeout: float = 180, queues: list[str] | None = None) -> None:
    """Wait until the sagas are over, not just decided: every event sent, payments captured, stock
    committed, `queues` (default: the pipeline's) empty. The next phase then starts on an idle pipeline."""
    if queues is None:
        queues = [queue for consumed_queues in consumed().values() for queue in consumed_queues]
    deadline = time.monotonic() + timeout
    while True:
        left = {
            "pending orders": Order.objects.filter(status=Order.Status.PENDING).count(),
            "outbox rows": OutboxMessage.objects.filter(sent_at__isnull=True).count(),
            "authorized payments": Payment.objects.filter(status=Payment.Status.AUTHORIZED).count(),
            "held reservations": Reservation.objects.filter(status=Reservation.Status.HELD).count(),
        }
        ready = {queue: stack.queue_state(queue)[0] for queue in queues}
        if not any(left.values()) and not any(ready.values()):
            return
        stack.check_alive()
        if time.monotonic() > deadline:
            busy = {k: v for k, v in {**left, **ready}.items() if v}
            raise BenchError(f"the pipeline did not go quiet within {timeout:.0f}s: {busy}")
        time.sleep(0.3)


def saturation(stack: BenchStack, mix: OrderMix, count: int, *, stall_timeout: float, placers: int = 1) -> dict:
    """Place `count` orders as fast as `order_place` accepts them, from `placers` threads (each with its own
    database connection, so that placing is not what limits the rate); orders/s from the first placement to
    the last decision (Order.decided_at)."""
    progress = Progress("saturation")
    since = timezone.now()
    started, cpu0 = time.time(), self_cpu_seconds()
    accept_ms: list[float] = []
    orders = [mix.next_order() for _ in range(count)]
    failures: list[BaseException] = []

    def place(share: list[Callable[[], Order]]) -> None:
        try:
            for order in share:
                begun = time.perf_counter()
                order()
                accept_ms.append((time.perf_counter() - begun) * 1000)
        except BaseException as error:  # raised again in the main thread
            failures.append(error)
        finally:
            connections.close_all()  # this thread's own (Django's connections are per thread)

    threads = [threading.Thread(target=place, args=(orders[i::placers],)) for i in range(placers)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.05)
        if progress.due():
            stack.check_alive()
            progress.say(f"placed {len(accept_ms)}/{count}, decided {decided_since(since)}")
    if failures:
        raise failures[0]
    placed_s = time.time() - started
    progress.say(f"all {count} placed in {placed_s:.1f}s ({count / placed_s:.0f}/s); waiting for decisions")
    decided = wait_decided(stack, since=since, expected=count, stall_timeout=stall_timeout, progress=progress)
    if decided < count:
        raise BenchError(
            f"saturation: only {decided}/{count} orders were decided ({stall_timeout:.0f}s without progress)"
        )
    orders = Order.objects.filter(created_at__gte=since)
    bounds = orders.aggregate(first=Min("created_at"), last=Max("decided_at"))
    elapsed = bounds["last"].timestamp() - started
    statuses = {status: orders.filter(status=status).count() for status in Order.Status.values}
    timeline = [
        (c.timestamp() - started, d.timestamp() - started) for c, d in orders.values_list("created_at", "decided_at")
    ]
    return {
        "orders": count,
        "orders_per_s": count / elapsed,
        "elapsed_s": elapsed,
        "placement_s": placed_s,
        "placement_per_s": count / placed_s,
        "accept": summary(histogram(accept_ms)),
        "statuses": statuses,
        "bench_process_cpu_s": self_cpu_seconds() - cpu0,
        "_timeline": timeline,
    }


def open_loop(stack: BenchStack, mix: OrderMix, rate: float, duration: float, *, stall_timeout: float) -> dict:
    """Place orders at a fixed rate for `duration` seconds whatever happens (open loop); latency runs
    from each order's intended send time to its decision, so a slow placement is not hidden."""
    count = max(1, round(rate * duration))
    progress = Progress(f"{rate:.1f}/s")
    since = timezone.now()
    wall0, mono0 = time.time(), time.monotonic()
    intended: dict = {}
    behind_ms = 0.0
    for i in range(count):
        due = i / rate
        delay = mono0 + due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            behind_ms = max(behind_ms, -delay * 1000)
        intended[mix.place().id] = wall0 + due
        if progress.due():
            stack.check_alive()
            progress.say(f"placed {i + 1}/{count}, decided {decided_since(since)}")
    decided = wait_decided(stack, since=since, expected=count, stall_timeout=stall_timeout, progress=progress)
    ids = list(intended)
    latencies_ms = []
    for start in range(0, len(ids), 500):
        rows = Order.objects.filter(id__in=ids[start : start + 500], decided_at__isnull=False)
        latencies_ms += [(at.timestamp() - intended[pk]) * 1000 for pk, at in rows.values_list("id", "decided_at")]
    hist = histogram(latencies_ms)
    return {
        "target_rate_per_s": rate,
        "duration_s": duration,
        "orders": count,
        "undecided": count - decided,
        "max_schedule_lag_ms": round(behind_ms, 1),
        "latency": summary(hist),
        "histogram_hdr": _encoded(hist),
        "_latencies_ms": latencies_ms,
    }


def memory_run(
    stack: BenchStack, mix: OrderMix, count: int, *, window: int, stall_timeout: float, workers: list[str]
) -> dict:
    """Place `count` orders keeping at most `window` undecided, sampling each worker's RSS; memory is
    flat when the RSS at the end is within 10% of the RSS once 10% of the orders were decided."""
    progress = Progress("memory")
    since, base = timezone.now(), mix.placed
    samples: list[dict] = []
    sampled = moved = time.monotonic()
    best = -1
    while True:
        decided = decided_since(since)
        if not samples or time.monotonic() - sampled >= 5 or decided >= count:
            sampled = time.monotonic()
            rss = {name: round(s.rss_mib, 1) for name, s in stack.sample().items() if name in workers}
            samples.append({"decided": decided, "t_s": round(sampled - progress.started, 1), "rss_mib": rss})
        if decided >= count:
            break
        placed = mix.placed - base
        for _ in range(min(window - (placed - decided), count - placed)):
            mix.place()
        if decided > best:
            best, moved = decided, time.monotonic()
        elif time.monotonic() - moved > stall_timeout:
            raise BenchError(f"memory run: stuck at {decided}/{count} decided")
        stack.check_alive()
        if progress.due():
            rss = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in samples[-1]["rss_mib"].items())
            progress.say(f"decided {decided}/{count}; RSS {rss}")
        time.sleep(0.1)
    warm = next(s for s in samples if s["decided"] >= count // 10)
    end = samples[-1]
    growth = {name: (end["rss_mib"][name] - warm["rss_mib"][name]) / warm["rss_mib"][name] for name in workers}
    return {
        "orders": count,
        "window": window,
        "rss_warm_mib": warm["rss_mib"],
        "rss_end_mib": end["rss_mib"],
        "growth": growth,
        "flat_within_10pct": all(abs(g) <= 0.10 for g in growth.values()),
        "samples": samples,
    }


def _encoded(hist: HdrHistogram) -> str:
    """The whole histogram, compressed and base64-encoded (HdrHistogram's interchange format)."""
    encoded = hist.encode()
    return encoded.decode() if isinstance(encoded, bytes) else encoded
