"""Orders reads."""

from __future__ import annotations

from uuid import UUID

from eventbus.health import bounded_count
from eventbus.selectors import TimelineEntry, Waterfall, timeline, waterfall
from orders.models import Order


def order_get(*, order_id: UUID) -> Order | None:
    return Order.objects.prefetch_related("lines").filter(pk=order_id).first()


def order_timeline(*, order_id: UUID) -> list[TimelineEntry]:
    """Every event of the order's saga, in and out, with its handler tasks' ids and states."""
    return timeline(str(order_id))


def order_waterfall(*, order_id: UUID) -> Waterfall:
    """The order's saga laid out in time: each event's hops (written, published, delivered, handled)."""
    return waterfall(correlation_id=str(order_id))


def order_count_per_status() -> dict[str, int]:
    """How many orders have each status, for the pipeline's health page and /metrics.

    Orders are never deleted: pending ones are few (the timeout decides them) and counted exactly, through
    the status index; confirmed and cancelled ones are estimated once they pass bounded_count's cap."""
    per_status = {status: Order.objects.filter(status=status) for status in Order.Status.values}
    return {status: bounded_count(orders, ordered_by="status") for status, orders in per_status.items()}
