"""Orders reads."""

from __future__ import annotations

from uuid import UUID

from eventbus.selectors import TimelineEntry, timeline
from orders.models import Order


def order_get(*, order_id: UUID) -> Order | None:
    return Order.objects.prefetch_related("lines").filter(pk=order_id).first()


def order_timeline(*, order_id: UUID) -> list[TimelineEntry]:
    """Every event of the order's saga, in and out, with its handler tasks' ids and states."""
    return timeline(str(order_id))
