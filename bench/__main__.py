"""`python -m bench` (`make bench`): the order pipeline's throughput and latency against its baselines.

In one run, on a stack of its own (RabbitMQ, Redis and a fresh database under --run-dir, on private
ports): raw confirmed publishes, the outbox relay alone, saturation with N orders, open-loop latency
at 25/50/75% of saturation, the same N orders through the saga written the plain Celery way, bare
Celery no-op tasks with the same workers. Prints a table and writes
bench/results/<timestamp>.json and .png. Everything it started is stopped at the end, on error too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.plain import QUEUE_NAMES as PLAIN_QUEUES
from bench.procstats import cpu_between, self_cpu_seconds
from bench.stack import BenchStack, consumed, pipeline_names
from devstack.brokers import StackError, say
from devstack.config import ROOT, StackConfig

RESULTS = ROOT / "bench" / "results"
SKIPPABLE = ("raw", "relay", "latency", "tracing", "plain", "celery")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5000, help="orders in the saturation run (default 5000)")
    parser.add_argument(
        "--placers", type=int, default=4, help="threads placing orders in the saturation runs (default 4)"
    )
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="length of each open-loop rate")
    parser.add_argument("--fractions", default="0.25,0.5,0.75", help="open-loop rates, as fractions of saturation")
    parser.add_argument("--relay-rows", type=int, default=20000, help="outbox rows for the relay alone")
    parser.add_argument("--noop-tasks", type=int, default=10000, help="tasks for the bare Celery baseline")
    parser.add_argument("--raw-seconds", type=float, default=5.0, help="length of the confirm-per-message publish run")
    parser.add_argument("--warmup-orders", type=int, default=100, help="orders before the measurements start")
    parser.add_argument(
        "--memory-orders", type=int, default=0, help="also a memory run of this many orders (e.g. 20000)"
    )
    parser.add_argument("--memory-window", type=int, default=300, help="most undecided orders in the memory run")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="ORDERS", help="also profile this many orders with py-spy"
    )
    parser.add_argument("--products", type=int, default=50, help="products in the catalogue")
    parser.add_argument("--seed", type=int, default=1, help="seed of the order mix")
    parser.add_argument("--stall-timeout", type=float, default=90.0, help="give up after this long without a decision")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--skip", type=_phases, default=set(), help=f"phases to leave out, comma-separated: {','.join(SKIPPABLE)}"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="set a variable for the bench and every process it starts (an experiment: DB_CONN_MAX_AGE=600)",
    )  # fmt: skip
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run" / "bench", help="data and logs (wiped first)")
    parser.add_argument("--amqp-port", type=int, default=5810)
    parser.add_argument("--management-port", type=int, default=15810)
    parser.add_argument("--redis-port", type=int, default=6510)
    parser.add_argument("--postgres-port", type=int, default=5832)
    parser.add_argument("--otlp-port", type=int, default=4810, help="the tracing phase's OTLP sink")
    parser.add_argument("--tracing-rounds", type=int, default=5, help="rounds of untraced and traced runs (default 5)")
    parser.add_argument("--tracing-orders", type=int, default=2000, help="orders in each run of a tracing round")
    parser.add_argument(
        "--trace-sample-ratio", type=float, default=0.1,
        help="also trace with this share of traces sampled, as production would (default 0.1; 0: skip)",
    )  # fmt: skip
    return parser.parse_args(argv)


def _phases(text: str) -> set[str]:
    phases = {phase for phase in text.split(",") if phase}
    if unknown := phases - set(SKIPPABLE):
        raise argparse.ArgumentTypeError(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {SKIPPABLE}")
    return phases


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = StackConfig(
        amqp_port=args.amqp_port,
        management_port=args.management_port,
        redis_port=args.redis_port,
        postgres_port=args.postgres_port,
        db=args.db,
        run_dir=args.run_dir.resolve(),
    )
    overrides = dict(item.split("=", 1) for item in args.env)
    stack = BenchStack(config, overrides=overrides)
    # Django, Celery and kombu read these when they load: set them before anything imports them.
    os.environ.update(stack.env)
    # Started in the background by a non-interactive shell, Python would ignore SIGINT; Ctrl-C must stop it all.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "timestamp": started.strftime("%Y%m%dT%H%M%SZ"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "git": _git(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1m_start": os.getloadavg()[0]},
        "stack": {
            "db": args.db,
            "run_dir": str(config.run_dir),
            "amqp_port": config.amqp_port,
            "redis_port": config.redis_port,
            "database_url": config.database_url,
            "env_overrides": overrides,
        },
    }
    try:
        run(stack, args, result)
    except KeyboardInterrupt:
        say("bench: interrupted; stopping everything")
        return 130
    except StackError as error:
        print(f"\033[1;31merror:\033[0m {error}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short and leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    result["machine"]["load_1m_end"] = os.getloadavg()[0]
    return finish(result)


def run(stack: BenchStack, args: argparse.Namespace, result: dict[str, Any]) -> None:
    stack.start_servers()
    say(f"bench: migrating a fresh {args.db} database")
    stack.migrate()
    import django

    django.setup()
    from bench import baselines, workload

    mix = workload.OrderMix(workload.seed_products(args.products), args.seed)
    baselines.declare_topology()
    if "raw" not in args.skip:
        say(f"bench: raw publishes to {baselines.EXCHANGE} ({args.raw_seconds:.0f}s confirm each, then batched)")
        result["raw_publish"] = baselines.raw_publishes(stack, seconds=args.raw_seconds, batch_messages=args.relay_rows)
    if "relay" not in args.skip:
        say(f"bench: relay alone, {args.relay_rows} outbox rows")
        result["relay_alone"] = baselines.relay_alone(stack, args.relay_rows)

    no_ops = []
    if "celery" not in args.skip:  # once before the pipeline, once at the end: the machine's speed drifts
        no_ops.append(bare_celery_phase(stack, args))
    say(f"bench: starting the pipeline ({', '.join(pipeline_names())})")
    stack.start_pipeline()
    pipeline_phases(stack, mix, args, result)
    stack.stop_procs(pipeline_names())

    if "tracing" not in args.skip:
        tracing_rounds(stack, mix, args, result)

    if "plain" not in args.skip:
        say(f"bench: the plain Celery saga, a worker x 2 on each of {', '.join(PLAIN_QUEUES)}")
        result["plain_celery"] = plain_phase(stack, mix.skus, args)

    if "celery" not in args.skip:
        no_ops.append(bare_celery_phase(stack, args))
        result["bare_celery"] = {
            **no_ops[-1],
            "cpu_ms_per_task": statistics.mean(run["cpu_ms_per_task"] for run in no_ops),
            "tasks_per_s": statistics.mean(run["tasks_per_s"] for run in no_ops),
            "runs": no_ops,
        }


def bare_celery_phase(stack: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    from bench import baselines

    workers = len(consumed())
    say(f"bench: bare Celery, {args.noop_tasks} no-op tasks on {workers} workers x 2")
    return baselines.bare_celery(stack, tasks=args.noop_tasks, workers=workers, concurrency=2)


def tracing_rounds(stack: BenchStack, mix: Any, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Tracing's cost, in rounds: each round runs the pipeline untraced, then tracing every trace, then (with
    --trace-sample-ratio) a share of them, and one untraced run ends the last round. A traced run's overhead
    is its CPU per order against the mean of the untraced runs either side of its round; the reported
    overhead is the median over the rounds. The machine's speed drifts over minutes by as much as tracing
    costs, so each traced run is compared with runs made minutes apart, never with the saturation run above
    (the database has grown since, and on PostgreSQL autovacuum works through it)."""
    runs = argparse.Namespace(**{**vars(args), "orders": args.tracing_orders})
    kinds = [("tracing", 1.0)] + ([("tracing_sampled", args.trace_sample_ratio)] if args.trace_sample_ratio else [])
    untraced: list[dict[str, Any]] = []
    traced: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in kinds}
    for number in range(1, args.tracing_rounds + 1):
        say(f"bench: tracing round {number}/{args.tracing_rounds}: untraced, {args.tracing_orders} orders")
        untraced.append(tracing_phase(stack, mix, runs, ratio=0.0))
        for key, ratio in kinds:
            what = "every trace" if ratio >= 1 else f"traces sampled at {ratio:g} (parent-based)"
            say(f"bench: tracing round {number}/{args.tracing_rounds}: {what}, OTLP to a sink on {args.otlp_port}")
            traced[key].append(tracing_phase(stack, mix, runs, ratio=ratio))
    say("bench: tracing, the last untraced run")
    untraced.append(tracing_phase(stack, mix, runs, ratio=0.0))
    result["untraced"] = {
        "cpu_ms_per_order": statistics.mean(run["cpu_ms_per_order"] for run in untraced),
        "runs": untraced,
    }
    for key, ratio in kinds:
        overheads = [
            run["cpu_ms_per_order"] / statistics.mean(u["cpu_ms_per_order"] for u in untraced[i : i + 2]) - 1
            for i, run in enumerate(traced[key])
        ]
        result[key] = {
            **traced[key][-1],
            "cpu_ms_per_order": statistics.median(run["cpu_ms_per_order"] for run in traced[key]),
            "orders_per_s": statistics.median(run["orders_per_s"] for run in traced[key]),
            "overheads": overheads,
            "overhead": statistics.median(overheads),
            "runs": traced[key],
        }
        rounds = ", ".join(f"{overhead:+.1%}" for overhead in overheads)
        what = "every trace" if ratio >= 1 else f"{ratio:g} sampled"
        say(f"bench: tracing ({what}): CPU per order {result[key]['overhead']:+.1%}, the median of {rounds}")


def tracing_phase(stack: BenchStack, mix: Any, args: argparse.Namespace, *, ratio: float = 1.0) -> dict[str, Any]:
    """Warm-up and saturation as before, with OTEL_TRACES_EXPORTER=otlp in every pipeline process, exporting to
    a sink that discards what it gets; the sink's own CPU is left out of the CPU per order. Every trace is sampled,
    or (`ratio` below 1) that share of them, as OpenTelemetry's parent-based trace-id ratio sampler decides; with
    `ratio` 0, tracing is off (and no sink runs): the traced runs' baseline."""
    env: dict[str, str] = {}
    sinks: tuple[str, ...] = ()
    if ratio:
        sinks = (stack.start_otlp_sink(args.otlp_port),)
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{args.otlp_port}"}
    if 0 < ratio < 1:
        env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": f"{ratio:g}"}
    stack.start_pipeline(env=env)
    try:
        saturation, _, _, cpu = measured_saturation(stack, mix, args, leave_out=sinks)
    finally:
        stack.stop_procs([*pipeline_names(), *sinks])
    saturation["cpu_s"] = {name: round(value, 2) for name, value in cpu.items()}
    if sinks:
        sink_summary = json.loads(stack.log_tail(sinks[0], 1))
        saturation["spans_per_order"] = round(sink_summary["spans"] / (args.orders + args.warmup_orders), 1)
        saturation["sink"] = sink_summary
        saturation["sample_ratio"] = ratio
    return saturation


def measured_saturation(
    stack: BenchStack,
    mix: Any,
    args: argparse.Namespace,
    *,
    queues: list[str] | None = None,
    leave_out: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict, dict, dict[str, float]]:
    """Warm-up, then saturation with the CPU of every process (but those in `leave_out`) and of the bench
    process; returns the saturation results, the samples before and after it, and CPU seconds per process."""
    from bench import workload

    if args.warmup_orders:
        say(f"bench: warm-up, {args.warmup_orders} orders")
        workload.saturation(stack, mix, args.warmup_orders, stall_timeout=args.stall_timeout, placers=args.placers)
        workload.wait_quiet(stack, queues=queues)
    first = stack.sample()
    say(f"bench: saturation, {args.orders} orders as fast as they are accepted")
    saturation = workload.saturation(stack, mix, args.orders, stall_timeout=args.stall_timeout, placers=args.placers)
    during = stack.sample()
    workload.wait_quiet(stack, queues=queues)
    cpu = {name: value for name, value in cpu_between(first, during).items() if name not in leave_out}
    saturation["cpu_ms_per_order"] = 1000 * (sum(cpu.values()) + saturation["bench_process_cpu_s"]) / args.orders
    rate, cpu_ms = saturation["orders_per_s"], saturation["cpu_ms_per_order"]
    say(f"bench: saturation {rate:.1f} orders/s, {cpu_ms:.1f} ms CPU per order")
    return saturation, first, during, cpu


def pipeline_phases(stack: BenchStack, mix: Any, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Warm-up, saturation, open-loop latency, then the optional profile and memory runs."""
    from bench import workload

    saturation, first, during, cpu = measured_saturation(stack, mix, args)
    result["saturation"] = saturation

    result["latency"] = []
    fractions = [] if "latency" in args.skip else [float(f) for f in args.fractions.split(",") if f]
    for fraction in fractions:
        rate = fraction * saturation["orders_per_s"]
        say(f"bench: open loop at {fraction:.0%} of saturation, {rate:.1f} orders/s for {args.latency_seconds:.0f}s")
        before, bench_cpu, started = stack.sample(), self_cpu_seconds(), time.monotonic()
        phase = workload.open_loop(stack, mix, rate, args.latency_seconds, stall_timeout=args.stall_timeout)
        workload.wait_quiet(stack)
        phase |= _cpu_of_phase(before, stack.sample(), self_cpu_seconds() - bench_cpu, started, phase["orders"])
        phase["fraction"] = fraction
        result["latency"].append(phase)
        stats = phase["latency"]
        say(
            f"bench: p50 {stats['p50_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms, max {stats['max_ms']:.1f} ms; "
            f"{phase['cpu_ms_per_order']:.1f} ms CPU per order, {phase['cpu_cores']:.2f} cores busy"
        )

    if args.profile:
        from bench import profiling

        say(f"bench: profiling {args.profile} orders with py-spy")
        result["profile"] = profiling.record(stack, mix, args.profile, RESULTS / f"{result['timestamp']}-profile")
        workload.wait_quiet(stack)
    result["processes"] = _process_rows(first, during, stack.sample(), cpu)
    result["processes"]["bench (order_place, polls)"] = {
        "saturation_cpu_s": round(saturation["bench_process_cpu_s"], 2)
    }
    result["worker_memory_growth"] = {
        name: row["growth"] for name, row in result["processes"].items() if name in consumed() and "growth" in row
    }
    if args.memory_orders:
        say(f"bench: memory run, {args.memory_orders} orders")
        result["memory"] = workload.memory_run(
            stack, mix, args.memory_orders, window=args.memory_window,
            stall_timeout=args.stall_timeout, workers=list(consumed()),
        )  # fmt: skip


def _cpu_of_phase(before: dict, after: dict, bench_cpu_s: float, started: float, orders: int) -> dict[str, Any]:
    """CPU of an open-loop phase until its queues were quiet, every process's and the bench's own: per order, and
    in cores busy over the phase. An event handled alone costs more than one in a batch, so at a fraction of
    saturation the machine is busier than that fraction."""
    cpu = cpu_between(before, after)
    total = sum(cpu.values()) + bench_cpu_s
    return {
        "cpu_ms_per_order": round(1000 * total / orders, 2),
        "cpu_cores": round(total / (time.monotonic() - started), 2),
        "cpu_s": {name: round(value, 2) for name, value in cpu.items()} | {"bench": round(bench_cpu_s, 2)},
    }


def plain_phase(stack: BenchStack, skus: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up and saturation with the pipeline's orders (same products, seed and count), placed by the
    plain saga's order_place and run by its workers (one per queue, 2 processes each), measured as the
    pipeline's saturation is."""
    from bench import workload
    from bench.plain.tasks import order_place

    mix = workload.OrderMix(skus, args.seed, place_order=order_place)
    names = stack.start_plain_workers(concurrency=2)
    try:
        saturation, _, _, cpu = measured_saturation(stack, mix, args, queues=list(PLAIN_QUEUES))
    finally:
        stack.stop_procs(names)
    saturation["workers"], saturation["concurrency"] = len(names), 2
    saturation["cpu_s"] = {name: round(value, 2) for name, value in cpu.items()}
    saturation["cpu_s"]["bench (order_place, polls)"] = round(saturation["bench_process_cpu_s"], 2)
    return saturation


def _process_rows(first: dict, during: dict, end: dict, cpu: dict[str, float]) -> dict[str, dict]:
    """Per process tree: CPU seconds in the saturation run, RSS after warm-up and at the end, peak RSS."""
    rows = {}
    for name in end:
        row: dict[str, Any] = {"saturation_cpu_s": round(cpu.get(name, 0.0), 2), "end": end[name].as_dict()}
        row["rss_end_mib"] = round(end[name].rss_mib, 1)
        row["peak_rss_mib"] = round(end[name].hwm_mib, 1)
        if name in first:
            row["rss_start_mib"] = round(first[name].rss_mib, 1)
            row["growth"] = round((end[name].rss_mib - first[name].rss_mib) / first[name].rss_mib, 4)
        if name in during:
            row["after_saturation"] = during[name].as_dict()
        rows[name] = row
    return rows


def finish(result: dict[str, Any]) -> int:
    from bench import report

    result["ratios"] = report.ratios(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{result['timestamp']}.json"
    png_path = RESULTS / f"{result['timestamp']}.png"
    report.write_json(result, json_path)
    report.plot(result, png_path)
    print()
    print(report.table(result))
    if "profile" in result:
        print()
        print((Path(result["profile"]["dir"]) / "summary.txt").read_text())
    print()
    say(f"bench: results in {json_path.relative_to(ROOT)} and {png_path.relative_to(ROOT)}")
    return 0


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603, S607
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


if __name__ == "__main__":
    started_at = time.monotonic()
    code = main()
    say(f"bench: finished in {time.monotonic() - started_at:.0f}s")
    sys.exit(code)
