"""The run's results: ratios against the issue's targets, a printed table, JSON and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TARGETS = {
    "orders_vs_plain_celery": (">=", 2.0),
    "cpu_per_order_vs_noop": ("<=", 25.0),
    "relay_vs_confirm_each": (">=", 3.0),
    "p50_ms_at_25pct": ("<=", 45.0),
    "p99_ms_at_50pct": ("<=", 250.0),
    "worker_memory_growth": ("<=", 0.10),
    "tracing_cpu_overhead": ("<=", 0.10),
    "tracing_cpu_overhead_sampled": ("<=", 0.10),
}


PERCENTAGES = {"worker_memory_growth", "tracing_cpu_overhead", "tracing_cpu_overhead_sampled"}


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets as measured ratios and values; reported, never asserted."""
    out: dict[str, Any] = {}
    saturation, bare, plain = result.get("saturation"), result.get("bare_celery"), result.get("plain_celery")
    if saturation and plain:
        out["orders_vs_plain_celery"] = saturation["orders_per_s"] / plain["orders_per_s"]
    if saturation and bare:
        out["cpu_per_order_vs_noop"] = saturation["cpu_ms_per_order"] / bare["cpu_ms_per_task"]
    relay, raw = result.get("relay_alone"), result.get("raw_publish")
    if relay and raw:
        out["relay_vs_confirm_each"] = relay["events_per_s"] / raw["confirm_each_per_s"]
    phases = {phase["fraction"]: phase for phase in result.get("latency", [])}
    if quarter := phases.get(0.25):
        out["p50_ms_at_25pct"] = quarter["latency"]["p50_ms"]
    if half := phases.get(0.5):
        out["p99_ms_at_50pct"] = half["latency"]["p99_ms"]
    untraced = result.get("untraced") or saturation  # runs before this baseline existed compared with saturation
    for phase, name in (("tracing", "tracing_cpu_overhead"), ("tracing_sampled", "tracing_cpu_overhead_sampled")):
        if untraced and (traced := result.get(phase)):
            # Runs in rounds carry the median of their rounds' overheads; earlier runs, one traced run each.
            out[name] = traced.get("overhead", traced["cpu_ms_per_order"] / untraced["cpu_ms_per_order"] - 1)
    growth = result.get("memory", {}).get("growth") or result.get("worker_memory_growth")
    if growth:
        out["worker_memory_growth"] = max(abs(value) for value in growth.values())
    return {name: {"value": value, "target": _target(name), "met": _met(name, value)} for name, value in out.items()}


def _target(name: str) -> str:
    op, bound = TARGETS[name]
    return f"{op} {bound:.0%}" if name in PERCENTAGES else f"{op} {bound:g}"


def _met(name: str, value: float) -> bool:
    op, bound = TARGETS[name]
    return value >= bound if op == ">=" else value <= bound


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}M"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """The human summary printed at the end of a run."""
    lines = []
    machine = result["machine"]
    lines.append(
        f"Benchmark {result['timestamp']}  db={result['stack']['db']}  cpus={machine['cpus']}  "
        f"load(1m) {machine['load_1m_start']:.2f} -> {machine['load_1m_end']:.2f}  "
        f"commit {result['git']['commit'][:10]}{' (dirty)' if result['git']['dirty'] else ''}"
    )
    lines.append("")
    lines.append(f"{'Throughput':<52}{'value':>14}")
    raw, relay, bare, sat = (result.get(k) for k in ("raw_publish", "relay_alone", "bare_celery", "saturation"))
    if raw:
        lines.append(f"  {'raw kombu publish, confirm per message':<50}{_n(raw['confirm_each_per_s']):>14} msg/s")
        label = f"raw publish, batched confirms ({raw['batch_size']}/wait)"
        lines.append(f"  {label:<50}{_n(raw['batched_confirms_per_s']):>14} msg/s")
    if relay:
        label = f"relay alone ({_n(relay['rows'])} outbox rows, sweep)"
        lines.append(f"  {label:<50}{_n(relay['events_per_s']):>14} events/s")
        lines.append(f"  {'  outbox.publish inside transactions':<50}{_n(relay['outbox_writes_per_s']):>14} rows/s")
    if bare:
        label = f"bare Celery no-op ({bare['workers']} workers x {bare['concurrency']})"
        lines.append(f"  {label:<50}{_n(bare['tasks_per_s']):>14} tasks/s")
        lines.append(
            f"  {'  send_task, confirm per message':<50}{_n(bare['send_task_confirm_each_per_s']):>14} tasks/s"
        )
    if sat:
        label = f"pipeline saturation ({_n(sat['orders'])} orders, to last decided)"
        lines.append(f"  {label:<50}{_n(sat['orders_per_s'], 1):>14} orders/s")
        lines.append(f"  {'  order_place accepted':<50}{_n(sat['placement_per_s']):>14} orders/s")
        accept = f"{sat['accept']['p50_ms']:.1f} / {sat['accept']['p99_ms']:.1f}"
        lines.append(f"  {'  order_place call p50 / p99 (ms)':<50}{accept:>14}")
        lines.append(f"  {'  CPU per order, all processes (ms)':<50}{sat['cpu_ms_per_order']:>14.1f}")
        if bare:
            lines.append(f"  {'  CPU per no-op task, workers + broker (ms)':<50}{bare['cpu_ms_per_task']:>14.2f}")
            if "runs" in bare:
                runs = " and ".join(f"{run['cpu_ms_per_task']:.2f}" for run in bare["runs"])
                lines.append(f"  {'    mean of: before the pipeline, at the end':<50}{runs:>14}")
    plain = result.get("plain_celery")
    if plain:
        label = f"plain Celery saga ({_n(plain['orders'])} orders, {plain['workers']} workers x {plain['concurrency']})"
        lines.append(f"  {label:<50}{_n(plain['orders_per_s'], 1):>14} orders/s")
        lines.append(f"  {'  order_place accepted':<50}{_n(plain['placement_per_s']):>14} orders/s")
        lines.append(f"  {'  CPU per order, all processes (ms)':<50}{plain['cpu_ms_per_order']:>14.1f}")
        per_order = ", ".join(f"{name} {1000 * cpu / plain['orders']:.1f}" for name, cpu in plain["cpu_s"].items())
        lines.append(f"    ms/order: {per_order}")
    if untraced := result.get("untraced"):
        runs = ", ".join(f"{run['cpu_ms_per_order']:.1f}" for run in untraced["runs"])
        label = "pipeline, untraced, either side of the traced runs"
        lines.append(f"  {label:<50}{untraced['cpu_ms_per_order']:>14.1f} ms CPU/order ({runs})")
    for key in ("tracing", "tracing_sampled"):
        if traced := result.get(key):
            ratio = traced.get("sample_ratio", 1.0)
            what = "all traces" if ratio >= 1 else f"{ratio:g} of traces"
            runs = f"{len(traced['runs'])} x " if "runs" in traced else ""
            label = f"pipeline, traced: {what} ({runs}{_n(traced['orders'])} orders)"
            lines.append(f"  {label:<50}{_n(traced['orders_per_s'], 1):>14} orders/s")
            cpu = traced["cpu_ms_per_order"]
            lines.append(f"  {'  CPU per order, all processes but the sink (ms)':<50}{cpu:>14.1f}")
            if "overheads" in traced:
                rounds = ", ".join(f"{overhead:+.1%}" for overhead in traced["overheads"])
                label = "  overhead on the untraced runs beside it"
                lines.append(f"  {label:<50}{traced['overhead']:>+14.1%} ({rounds})")
            if "spans_per_order" in traced:
                lines.append(f"  {'  spans exported per order':<50}{traced['spans_per_order']:>14.1f}")
    if result.get("latency"):
        lines.append("")
        # lag: how far the bench itself fell behind its schedule (a starved load generator, not the pipeline).
        # CPU/order and cores: every process's and the bench's, from the phase's start until its queues were quiet.
        header = f"{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'n':>7}{'lost':>6}{'lag':>8}{'CPU/order':>11}{'cores':>7}"
        lines.append(f"{'Latency, intended send -> decided_at (ms)':<40}{header}")
        for phase in result["latency"]:
            stats = phase["latency"]
            rate = f"{phase['target_rate_per_s']:.1f}/s, {phase['duration_s']:.0f}s"
            label = f"  {phase['fraction']:.0%} of saturation ({rate})"
            lines.append(
                f"{label:<40}{stats['p50_ms']:>9.1f}{stats['p95_ms']:>9.1f}{stats['p99_ms']:>9.1f}"
                f"{stats['max_ms']:>9.1f}{stats['count']:>7}{phase['undecided']:>6}"
                f"{phase.get('max_schedule_lag_ms', 0.0):>8.0f}"
                + (f"{phase['cpu_ms_per_order']:>11.1f}{phase['cpu_cores']:>7.2f}" if "cpu_cores" in phase else "")
            )
    if result.get("processes"):
        orders = sat["orders"] if sat else 0
        lines.append("")
        lines.append(
            f"{'Processes (trees incl. pool children)':<36}{'CPU s':>8}{'ms/order':>10}{'RSS start':>11}"
            f"{'RSS end':>9}{'growth':>8}{'peak RSS':>10}"
        )
        for name, row in result["processes"].items():
            cpu = row.get("saturation_cpu_s", 0.0)
            per_order = f"{1000 * cpu / orders:.1f}" if orders else "-"
            lines.append(
                f"  {name:<34}{cpu:>8.1f}{per_order:>10}{_mib(row.get('rss_start_mib')):>11}"
                f"{_mib(row.get('rss_end_mib')):>9}{_pct(row.get('growth')):>8}{_mib(row.get('peak_rss_mib')):>10}"
            )
        lines.append(
            "  (CPU s: during the saturation run; RSS start: after the warm-up; RSS end: after the last phase)"
        )
    memory = result.get("memory")
    if memory:
        lines.append("")
        lines.append(f"Memory run: {_n(memory['orders'])} orders, at most {memory['window']} undecided")
        for name, growth in memory["growth"].items():
            lines.append(
                f"  {name:<20} RSS {memory['rss_warm_mib'][name]:.0f} MiB after 10% -> "
                f"{memory['rss_end_mib'][name]:.0f} MiB at the end ({growth:+.1%})"
            )
    lines.append("")
    lines.append(f"{'Targets (the issue; reported, not asserted)':<48}{'measured':>12}{'target':>10}")
    labels = {
        "orders_vs_plain_celery": "orders/s / plain Celery saga orders/s",
        "cpu_per_order_vs_noop": "CPU per order / CPU per no-op task",
        "p50_ms_at_25pct": "p50 at 25% of saturation (ms)",
        "relay_vs_confirm_each": "relay events/s / confirm-each publishes/s",
        "p99_ms_at_50pct": "p99 at 50% of saturation (ms)",
        "worker_memory_growth": "worker RSS growth (largest)",
        "tracing_cpu_overhead": "CPU per order, tracing on vs off",
        "tracing_cpu_overhead_sampled": "the same, a share of traces sampled",
    }
    for name, row in result.get("ratios", {}).items():
        value = f"{row['value']:.1%}" if name in PERCENTAGES else f"{row['value']:.3g}"
        lines.append(f"  {labels[name]:<46}{value:>12}{row['target']:>10}  {'met' if row['met'] else 'MISSED'}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    public = _strip_private(result)
    path.write_text(json.dumps(public, indent=2, default=str) + "\n")


def _strip_private(value: Any) -> Any:
    """Drop the raw per-order series (keys starting with `_`): the plot uses them, the JSON keeps histograms."""
    if isinstance(value, dict):
        return {k: _strip_private(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [_strip_private(v) for v in value]
    return value


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency distributions (CDF and percentile spectrum) per rate, the saturation run's timeline and,
    after a memory run, each worker's RSS over it: one panel per part the run has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if any(phase["_latencies_ms"] for phase in result.get("latency", [])):
        panels += [_latency_cdf, _latency_spectrum]
    if result.get("saturation", {}).get("_timeline"):
        panels.append(_saturation_timeline)
    if result.get("memory"):
        panels.append(_memory)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 5.2), squeeze=False)
    for draw, ax in zip(panels, axes[0], strict=False):
        draw(result, ax)
    fig.suptitle(f"Order pipeline benchmark {result['timestamp']} ({result['stack']['db']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(phase: dict[str, Any]) -> str:
    return f"{phase['fraction']:.0%} ({phase['target_rate_per_s']:.1f}/s)"


def _latency_cdf(result: dict[str, Any], ax: Any) -> None:
    for phase in result["latency"]:
        values = sorted(phase["_latencies_ms"])
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=_label(phase))
    ax.set_xscale("log")
    ax.set_xlabel("latency, intended send to decided (ms)")
    ax.set_ylabel("fraction of orders")
    ax.set_title("Latency CDF by offered load")
    for bound, style in ((60, ":"), (250, "--")):
        ax.axvline(bound, color="grey", linestyle=style, linewidth=1)
    ax.legend()


def _latency_spectrum(result: dict[str, Any], ax: Any) -> None:
    for phase in result["latency"]:
        values = sorted(phase["_latencies_ms"])
        count = len(values)
        # x = 1 / (1 - percentile): p50 at 2, p90 at 10, p99 at 100, as HdrHistogram plots do.
        ax.plot([count / (count - i) for i in range(count)], values, label=_label(phase))
    ax.set_xscale("log")
    ax.set_xlim(1, 10000)
    ax.set_xticks([2, 10, 100, 1000, 10000], ["p50", "p90", "p99", "p99.9", "p99.99"])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency by percentile")
    ax.axhline(250, color="grey", linestyle="--", linewidth=1)
    ax.legend()


def _saturation_timeline(result: dict[str, Any], ax: Any) -> None:
    saturation = result["saturation"]
    placed = [c for c, _ in saturation["_timeline"]]
    decided = [d for _, d in saturation["_timeline"] if d is not None]
    bins = list(range(math.ceil(max(decided + placed)) + 2))
    ax.hist(placed, bins=bins, histtype="step", label="placed")
    ax.hist(decided, bins=bins, histtype="step", label="decided")
    ax.axhline(saturation["orders_per_s"], color="grey", linestyle=":", linewidth=1, label="mean orders/s")
    ax.set_xlabel("seconds since first placement")
    ax.set_ylabel("orders per second")
    ax.set_title(f"Saturation run, {saturation['orders']} orders")
    ax.legend()


def _memory(result: dict[str, Any], ax: Any) -> None:
    memory = result["memory"]
    for name in memory["growth"]:
        ax.plot(
            [sample["decided"] for sample in memory["samples"]],
            [sample["rss_mib"][name] for sample in memory["samples"]],
            label=name,
        )
    ax.set_ylim(bottom=0)
    ax.set_xlabel("orders decided")
    ax.set_ylabel("RSS of the worker and its pool (MiB)")
    ax.set_title(f"Memory run, {memory['orders']} orders")
    ax.legend()
