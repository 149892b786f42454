"""The Jepsen-style summary of a chaos run."""

from __future__ import annotations

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
    lines = [
        "=" * 27 + " chaos summary " + "=" * 27,
        f"seed {seed}, {orders} orders, {len(stack.worker_names())} workers ({stack.workers_per_service} per service, "
        "concurrency 2) + relay, SQLite, RabbitMQ quorum queues",
        f"faults injected = {len(faults)}",
        *(f"  +{f.offset:6.1f}s  {f.kind:<16} {f.detail}" for f in faults),
        f"accepted = {verdict.accepted}   (refused by the database: {verdict.refused})",
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
        f"expected {verdict.poison_expected}, missing {len(verdict.poison_missing)}; "
        f"other {verdict.unexpected_dead_letters})",
        f"pickle marker = {'FOUND ' + ', '.join(verdict.markers_found) if verdict.markers_found else 'absent'}",
        f"queues drained = {'no: ' + '; '.join(verdict.queues_not_drained) if verdict.queues_not_drained else 'yes'}"
        f"   ({verdict.queues_checked} queues; eventbus.unrouted keeps {verdict.archived} unsubscribed events)",
        f"outbox unsent = {verdict.unsent}, phantom orders = {verdict.phantoms}, "
        f"process crashes = {len(crashes)}, restarts = {sum(stack.restarts.values())}",
        *(f"  crash: {crash}" for crash in crashes),
        f"elapsed = {timings['total']:.1f}s   (stack {timings['stack']:.1f}s, placing {timings['placing']:.1f}s, "
        f"quiet at +{timings['quiet']:.1f}s)",
        *(f"  violation: {example}" for example in verdict.examples),
        f"verdict = {'VALID' if verdict.violations == 0 else f'INVALID ({verdict.violations} violations)'}",
    ]
    print("\n".join(lines), flush=True)
