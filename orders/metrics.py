"""The orders app's metric: how long an order waits for its saga's decision (exported by eventbus.metrics)."""

from __future__ import annotations

from functools import partial

from django.db import transaction
from prometheus_client import Histogram

from eventbus.metrics import PREFIX, REGISTRY
from orders.models import Order

DECISION_SECONDS = Histogram(
    f"{PREFIX}order_decision_seconds",
    "Time from an order's placing to its saga's decision, by the decision (confirmed, cancelled).",
    ("status",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)


def order_decided(order: Order) -> None:
    """Observe how long `order` waited for the decision it was just given, once that decision commits."""
    seconds = (order.decided_at - order.created_at).total_seconds()
    transaction.on_commit(partial(DECISION_SECONDS.labels(order.status).observe, seconds))
