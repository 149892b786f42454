"""Where an order's CPU goes: py-spy samples each worker (pool children included), the relay and the
bench process (order_place) under load, then the stacks are summed by function and by library.

Only a thread holding the GIL is sampled (py-spy's --gil): one waiting for PostgreSQL's answer or the
broker's is not. Without it, psycopg's wait for a result, which py-spy does not see as idle, was a
quarter of a worker's samples on PostgreSQL and hid where the CPU goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from bench.stack import BenchStack, pipeline_names
from devstack.config import ROOT

if TYPE_CHECKING:
    from bench.workload import OrderMix

PY_SPY = Path(sys.executable).parent / "py-spy"
# Classified from the innermost frame outwards; the first match names where a sample's time went.
CATEGORIES = [
    ("database driver (sqlite3/psycopg execute, commit, connect)", ("django/db/backends/", "/psycopg/", "sqlite3/")),
    ("Django ORM (query building, model instances)", ("django/db/models/", "django/db/transaction", "django/db/utils")),
    ("AMQP client (amqp, kombu)", ("/amqp/", "/kombu/", "/vine/")),
    ("Celery and billiard machinery", ("/celery/", "/billiard/")),
    ("event validation (pydantic, jsonschema)", ("/pydantic", "/jsonschema/", "/referencing/")),
    ("sealing (cryptography)", ("/cryptography/", "eventbus/sealing.py")),
    ("JSON encode/decode", ("/json/",)),
    ("Redis client", ("/redis/",)),
    ("OpenTelemetry (SDK, instrumentation, OTLP export)", ("/opentelemetry/", "/google/protobuf/")),
    ("logging", ("/logging/",)),
    ("Django other (signals, settings, timezone)", ("/django/",)),
]
# Known places an order's time goes, counted inclusively (a sample in several of them counts in each).
COST_CENTRES = [
    ("Celery result backend, store_result (STARTED and SUCCESS rows)", "Backend.store_result", "celery/backends/"),
    ("  of it mark_as_done (the SUCCESS row)", "Backend.mark_as_done", "celery/backends/"),
    ("Celery task events to the broker", "EventDispatcher._publish", "celery/events/"),
    ("handler transaction (inbox row, effect, outbox row)", "apply_once", "eventbus/handling.py"),
    ("intake: parse and check an event", "EventIntake.on_event", "eventbus/intake.py"),
    ("intake: hand events over (send_task, confirm)", "EventIntake.hand_over", "eventbus/intake.py"),
    ("publish and wait for the broker's confirm, per message", "Channel.basic_publish_confirm", "amqp/channel.py"),
    ("SQL statements (execute)", "CursorWrapper._execute", "django/db/backends/utils.py"),
    ("COMMIT", "BaseDatabaseWrapper._commit", "django/db/backends/base/"),
    ("opening a database connection", "BaseDatabaseWrapper.connect", "django/db/backends/base/"),
    ("outbox nudge, Redis PUBLISH after commit", "nudge_relay", "eventbus/outbox.py"),
    ("availability cache refresh, Redis", "availability_refresh", "inventory/services.py"),
    ("order_place", "order_place", "orders/services.py"),
    ("relay: publish_rows", "publish_rows", "eventbus/relay.py"),
    ("relay: outbox_claim", "outbox_claim", "eventbus/outbox_claims.py"),
]


def record(stack: BenchStack, mix: OrderMix, orders: int, out_dir: Path, *, rate: int = 100) -> dict:
    """Place `orders` orders as fast as accepted while py-spy records every pipeline process and this one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {name: stack.procs[name].pid for name in pipeline_names()} | {"bench (order_place)": os.getpid()}
    spies = {}
    for name, pid in targets.items():
        argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nolineno",
                "--full-filenames", "--gil", "--output", str(_raw_path(out_dir, name))]  # fmt: skip
        if name in ("orders", "inventory", "payments"):
            argv.append("--subprocesses")
        log = (out_dir / f"{_slug(name)}.py-spy.log").open("wb")
        spies[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    time.sleep(1.5)  # py-spy attaches
    from django.utils import timezone

    from bench.workload import Progress, wait_decided

    progress = Progress("profile")
    since, started = timezone.now(), time.time()
    for i in range(orders):
        mix.place()
        if progress.due():
            progress.say(f"placed {i + 1}/{orders}")
    wait_decided(stack, since=since, expected=orders, stall_timeout=60, progress=progress)
    elapsed = time.time() - started
    for proc in spies.values():
        proc.send_signal(signal.SIGINT)
    for proc in spies.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    summaries = {name: summarize(_raw_path(out_dir, name)) for name in targets}
    (out_dir / "summary.txt").write_text(render(summaries, orders, elapsed))
    return {"orders": orders, "elapsed_s": elapsed, "rate_hz": rate, "dir": str(out_dir), "processes": summaries}


def _slug(name: str) -> str:
    return name.split()[0]


def _raw_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{_slug(name)}.collapsed.txt"


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) per frame, outermost first, from one py-spy raw line's stack."""
    frames = []
    for frame in stack.split(";"):
        if frame.startswith("process ") or frame.startswith("thread "):
            continue
        function, _, where = frame.rpartition(" (")
        frames.append((function or frame, where.rstrip(")")))
    return frames


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarize(path: Path, top: int = 15) -> dict:
    """Samples by library (innermost match), by function (self) and by project function (inclusive)."""
    categories: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    centres: Counter[str] = Counter()
    processes: Counter[str] = Counter()
    total = 0
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        processes[stack.split(";", 1)[0] if stack.startswith("process ") else "main"] += count
        frames = _frames(stack)
        if not frames:
            continue
        function, where = frames[-1]
        own[f"{function} ({_short(where)})"] += count
        categories[_category(frames)] += count
        for label, name, fragment in COST_CENTRES:
            if any(function == name and fragment in where for function, where in frames):
                centres[label] += count
        seen = set()
        for function, where in frames:
            if str(ROOT) in where and "/.venv/" not in where:
                key = f"{function} ({_short(where)})"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += count
    share = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "cost_centres_pct": {label: share(centres[label]) for label, _, _ in COST_CENTRES if centres[label]},
        "by_library_pct": {name: share(n) for name, n in categories.most_common()},
        "self_top_pct": {name: share(n) for name, n in own.most_common(top)},
        "project_inclusive_pct": {name: share(n) for name, n in inclusive.most_common(top)},
        "by_process_samples": dict(processes.most_common()),
    }


def _category(frames: list[tuple[str, str]]) -> str:
    for _, where in reversed(frames):
        for name, markers in CATEGORIES:
            if any(marker in where for marker in markers):
                return name
    innermost = frames[-1][1]
    if str(ROOT) in innermost and "/.venv/" not in innermost:
        return "project code"
    return "Python runtime and other"


SECTIONS = [
    ("cost centres (inclusive)", "cost_centres_pct"),
    ("by library (innermost frame)", "by_library_pct"),
    ("self time, top functions", "self_top_pct"),
    ("inclusive, project functions", "project_inclusive_pct"),
]


def render(summaries: dict[str, dict], orders: int, elapsed: float) -> str:
    lines = [
        f"py-spy profile: {orders} orders in {elapsed:.1f}s",
        "(samples of threads holding the GIL: Python's CPU; a thread waiting for the database or broker is left out)",
    ]
    for name, summary in summaries.items():
        lines.append("")
        lines.append(f"== {name}: {summary['samples']} samples ({summary['samples'] / orders:.2f} per order)")
        for title, key in SECTIONS:
            lines.append(f"  {title}:")
            lines += [f"    {pct:5.1f}%  {label}" for label, pct in summary[key].items()]
    return "\n".join(lines) + "\n"
