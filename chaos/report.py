"""The Jepsen-style summary of a chaos run, printed and written as JSON for whoever checks it next."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from chaos.checks import Verdict
from chaos.faults import Fault
from chaos.stack import ChaosStack
from orders.models import Order


def summary(
    verdict: Verdict,
    *,
    seed: int,
    orders: int,
    faults: list[Fault],
    crashes: list[str],
    stack: ChaosStack,
    timings: dict[str, float],
) -> None:
    """The Jepsen-style report: what was done to the system, what it did, and whether it held."""
    config = stack.config
    database = "PostgreSQL" if config.db == "postgres" else "SQLite"
    lines = [
        "=" * 27 + " chaos summary " + "=" * 27,
        f"seed {seed}, {orders} orders, {len(stack.worker_names())} workers ({stack.workers_per_service} per service, "
        f"concurrency 2) + {stack.relays} relay(s), {database}, RabbitMQ quorum queues on {config.rabbitmq_nodes} "
        "node(s)",
        f"faults injected = {len(faults)}",
        *(f"  +{f.offset:6.1f}s  {f.kind:<16} {f.detail}" for f in faults),
        f"accepted = {verdict.accepted}   (refused by the database: {verdict.refused}, of which committed "
        f"nonetheless: {verdict.uncertain})",
        f"confirmed = {verdict.statuses[Order.Status.CONFIRMED]}",
        f"cancelled = {verdict.statuses[Order.Status.CANCELLED]}   ("
        + ", ".join(f"{reason} {n}" for reason, n in sorted(verdict.cancel_reasons.items()))
        + ")",
        f"lost = {len(verdict.lost)}",
        f"duplicated = {len(verdict.duplicated)}",
        f"wrong effects = {len(verdict.wrong)}",
        f"recovered = {verdict.recovered}   (in flight during a fault, and still finished)",
        f"duplicates absorbed = {verdict.absorbed}   (handler runs whose inbox row showed the event already handled)",
        f"dead-lettered = {sum(verdict.dead_letters.values())}   (poison {verdict.dead_letters['poison']}, "
        f"expected {verdict.poison_expected}, through the broker while the database refused writes "
        f"{verdict.poison_via_broker}, missing {len(verdict.poison_missing)}; other {verdict.unexpected_dead_letters}; "
        f"filed more than once {verdict.filed_twice})",
        f"pickle marker = {'FOUND ' + ', '.join(verdict.markers_found) if verdict.markers_found else 'absent'}",
        f"queues drained = {'no: ' + '; '.join(verdict.queues_not_drained) if verdict.queues_not_drained else 'yes'}"
        f"   ({verdict.queues_checked} queues; eventbus.unrouted keeps {verdict.archived} unsubscribed events)",
        f"relays = {_shares(verdict.shares)}",
        f"published twice = {verdict.published_twice}   (sent rows tried more than once: "
        f"{verdict.published_twice - verdict.republished_unexplained} after a failed try; "
        f"{verdict.republished_unexplained} with none recorded, {_twice_judged(verdict)})",
        f"outbox unsent = {verdict.unsent} (blocked {verdict.blocked}), phantom orders = {verdict.phantoms}, "
        f"process crashes = {len(crashes)}, restarts = {sum(stack.restarts.values())}",
        *(f"  crash: {crash}" for crash in crashes),
        f"elapsed = {timings['total']:.1f}s   (stack {timings['stack']:.1f}s, placing {timings['placing']:.1f}s, "
        f"quiet at +{timings['quiet']:.1f}s)",
        *(f"  violation: {example}" for example in verdict.examples),
        f"verdict = {_verdict(verdict)}",
    ]
    print("\n".join(lines), flush=True)


def write_verdict(path: Path, verdict: Verdict, *, seed: int, orders: int, faults: list[Fault],
                  crashes: list[str]) -> None:  # fmt: skip
    """The verdict as JSON at `path`, so that a test or CI reads it instead of scraping the summary."""
    document = {
        "verdict": "VALID" if verdict.violations == 0 else "INVALID",
        "violations": verdict.violations,
        "seed": seed,
        "orders": orders,
        "accepted": verdict.accepted,
        "refused": verdict.refused,
        "committed_though_refused": verdict.uncertain,
        "lost": len(verdict.lost),
        "duplicated": len(verdict.duplicated),
        "wrong_effects": len(verdict.wrong),
        "confirmed": verdict.statuses[Order.Status.CONFIRMED],
        "cancelled": verdict.statuses[Order.Status.CANCELLED],
        "cancel_reasons": dict(verdict.cancel_reasons),
        "phantoms": verdict.phantoms,
        "unsent": verdict.unsent,
        "blocked": verdict.blocked,
        "poison_missing": verdict.poison_missing,
        "poison_via_broker": verdict.poison_via_broker,
        "dead_letters_filed_twice": verdict.filed_twice,
        "unexpected_dead_letters": verdict.unexpected_dead_letters,
        "queues_not_drained": verdict.queues_not_drained,
        "relays": verdict.shares,
        "published_twice": verdict.published_twice,
        "published_twice_unexplained": verdict.republished_unexplained,
        "relays_restarted": verdict.relays_restarted,
        "faults": [
            {**asdict(f), "offset": round(f.offset, 1), "started": f.started.isoformat(), "ended": f.ended.isoformat()}
            for f in faults
        ],
        "crashes": crashes,
        "examples": verdict.examples,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _verdict(verdict: Verdict) -> str:
    return "VALID" if verdict.violations == 0 else f"INVALID ({verdict.violations} violations)"


def _shares(shares: dict[str, int]) -> str:
    total = sum(shares.values())
    if not total:
        return "no row sent"
    return ", ".join(f"{name or '(unnamed)'} {n} ({n / total:.0%})" for name, n in sorted(shares.items()))


def _twice_judged(verdict: Verdict) -> str:
    if verdict.relays_restarted:
        return f"allowed: relays restarted {verdict.relays_restarted} time(s)"
    return "a violation" if verdict.republished_unexplained else "as it must be with no relay restarted"
