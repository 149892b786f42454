"""Handing an event to a handler as a worker does (its inbox row and effect in one transaction), without a broker."""

from __future__ import annotations

from eventbus.contracts import EventData
from eventbus.envelope import new_event
from eventbus.handling import apply_once
from eventbus.subscriptions import handler_by_name


def deliver(handler: str, data: EventData, *, task_id: str = "test-task", correlation_id: str = "") -> str:
    """Run the handler named `handler` (e.g. `inventory.reserve_stock`) on a new event carrying `data`;
    return its outcome ("done"), or raise what it raised (a worker dead-letters a PermanentError at once)."""
    return apply_once(handler_by_name(handler), new_event(data, correlation_id=correlation_id), task_id)
