"""Metrics that explain latency: how long each handler takes and how its runs end, retries, dead letters by
reason, duplicates absorbed, and how old events are when the relay publishes them. /metrics exports them beside
the health gauges (eventbus.views); apps add their own to REGISTRY (orders: decision latency).

The pipeline runs in many processes: web, relay, each worker and its pool processes. With PROMETHEUS_MULTIPROC_DIR
set (devstack: RUN_DIR/metrics; compose: a volume every app container mounts), prometheus_client keeps each
process's metrics in files of that directory and /metrics adds up all of them. The files are named by host and
process id: containers sharing the volume have pids of their own, which repeat. Without the variable each process
keeps its metrics in memory, and /metrics shows those of the process that serves it.
"""

from __future__ import annotations

import functools
import glob
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from celery.exceptions import Retry
from celery.signals import worker_process_init, worker_process_shutdown
from django.db import transaction
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from eventbus.subscriptions import Handler

PREFIX = "orderpipe_"
# prometheus_client reads the variable itself, when it is imported; an empty one counts as unset here, where
# prometheus_client would write its files into the working directory.
DIRECTORY = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
HOST = socket.gethostname().replace("_", "-")  # `_` separates the parts of a file's name


def process_identifier() -> str:
    """This process among every process that shares the directory: its host's name and its pid."""
    return f"{HOST}-{os.getpid()}"


if DIRECTORY:
    os.makedirs(DIRECTORY, exist_ok=True)
# Before any metric below exists: each takes the value class in force when it (or a labelled child) is made.
values.ValueClass = values.MultiProcessValue(process_identifier) if DIRECTORY else values.MutexValue

REGISTRY = CollectorRegistry()  # the pipeline's metrics, and the names the dashboard and the alerts may use
OUTCOMES = ("done", "duplicate", "retrying", "dead-lettered", "failed")

HANDLER_SECONDS = Histogram(
    f"{PREFIX}handler_duration_seconds",
    "Time a handler took on one event, by handler and outcome (done, duplicate, retrying, dead-lettered, failed).",
    ("handler", "outcome"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
HANDLERS_RUNNING = Gauge(
    f"{PREFIX}handlers_in_progress",
    "Handlers running now, by handler.",
    ("handler",),
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
RETRIES = Counter(
    f"{PREFIX}handler_retries",
    "Handler runs that ended in a retry, by handler.",
    ("handler",),
    registry=REGISTRY,
)
DUPLICATES = Counter(
    f"{PREFIX}duplicates_absorbed",
    "Deliveries of an event its handler had already handled (the inbox absorbed them), by handler.",
    ("handler",),
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    f"{PREFIX}dead_letters_stored",
    "Messages filed in the dead-letter store, by reason (poison, forged, hop_limit, ...) and queue.",
    ("reason", "queue"),
    registry=REGISTRY,
)
PUBLISH_AGE = Histogram(
    f"{PREFIX}event_publish_age_seconds",
    "Age of an event when the broker confirmed its publication, from its outbox row's writing, by producer.",
    ("producer",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)


@dataclass
class _Run:
    """One handler's run at one event, while it lasts."""

    dead_lettered: bool = False


_run: ContextVar[_Run | None] = ContextVar("handler_run", default=None)
Function = TypeVar("Function", bound=Callable[..., Any])


def observe_handler_runs(function: Function) -> Function:
    """Time each call of `function`, which runs one handler (the Handler among its arguments) at one event, by the
    outcome it ends with: what it returns (an outcome, or a task result naming one as `outcome`), `retrying` when
    it raises Celery's Retry, `dead-lettered` when it raises after storing a dead letter, `failed` otherwise."""

    @functools.wraps(function)
    def observed(*args: Any, **kwargs: Any) -> Any:
        handler = next(arg.name for arg in args if isinstance(arg, Handler))
        run, running = _Run(), HANDLERS_RUNNING.labels(handler)
        token = _run.set(run)
        running.inc()
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = function(*args, **kwargs)
            outcome = result["outcome"] if isinstance(result, dict) else result
            return result
        except Retry:
            outcome = "retrying"
            raise
        except Exception:
            outcome = "dead-lettered" if run.dead_lettered else "failed"
            raise
        finally:
            _run.reset(token)
            running.dec()
            seconds = time.perf_counter() - started
            if (held := _held.get()) is not None:
                held.runs.append((handler, outcome, seconds))
            else:
                _observe(handler, outcome, seconds)

    return observed  # type: ignore[return-value]


def _observe(handler: str, outcome: str, seconds: float) -> None:
    HANDLER_SECONDS.labels(handler, outcome).observe(seconds)
    if outcome == "retrying":
        RETRIES.labels(handler).inc()
    elif outcome == "duplicate":
        DUPLICATES.labels(handler).inc()


@dataclass
class HeldRuns:
    """Handler runs observed but not counted yet: (handler, outcome, seconds) each."""

    runs: list[tuple[str, str, float]] = field(default_factory=list)

    def observe(self) -> None:
        for run in self.runs:
            _observe(*run)


_held: ContextVar[HeldRuns | None] = ContextVar("held_handler_runs", default=None)


@contextmanager
def handler_runs_held() -> Iterator[HeldRuns]:
    """Hold back the handler runs observed inside the block: the caller counts them (`.observe()`) once they
    turn out to have happened. A batch tried without savepoints takes back every run when one fails."""
    held = HeldRuns()
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)


def dead_letter_stored(*, reason: str, queue: str) -> None:
    """Count a dead letter once it commits, and tell the handler run that stored it (if one did)."""
    if (run := _run.get()) is not None:
        run.dead_lettered = True
    transaction.on_commit(DEAD_LETTERS.labels(reason, queue).inc)


def event_published(time_written: str | None, *, producer: str) -> None:
    """Observe the age of an event of `producer` the broker confirmed, from its CloudEvents `time` (when publish()
    wrote it)."""
    try:
        written = datetime.fromisoformat(time_written)
    except (TypeError, ValueError):  # not one the outbox wrote: no age to tell
        return
    PUBLISH_AGE.labels(producer).observe(max((timezone.now() - written).total_seconds(), 0.0))


class _SharedDirectory(MultiProcessCollector):
    """Every process's metrics from the directory; only the pipeline's, should a library in one of those
    processes (Flower's) write its own there too."""

    def collect(self) -> Iterable[Metric]:
        return [metric for metric in super().collect() if metric.name.startswith(PREFIX)]


def exported() -> Collector:
    """What /metrics adds to the health gauges: the metrics of every process on this host, or this process's."""
    return _SharedDirectory(None, path=DIRECTORY) if DIRECTORY else REGISTRY


@worker_process_shutdown.connect
def _forget_this_process(**_: Any) -> None:
    # Its live gauges (handlers in progress) go with it; its counters and histograms stay in the totals.
    if DIRECTORY:
        mark_process_dead(process_identifier(), DIRECTORY)


@worker_process_init.connect
def _forget_killed_processes(**_: Any) -> None:
    # A pool process killed (time limit, SIGKILL) never said it ended: its replacement clears its live gauges.
    if not DIRECTORY:
        return
    for path in glob.glob(os.path.join(DIRECTORY, f"gauge_live*_{HOST}-*.db")):
        pid = int(path.removesuffix(".db").rsplit("-", 1)[1])
        if not _alive(pid):
            mark_process_dead(f"{HOST}-{pid}", DIRECTORY)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
