"""When a worker's intake received each event, carried to the handler task and kept on the inbox row; and which
events the broker had delivered before.

The intake puts the wall-clock time of receipt of every event it hands over in a header of the task message
(event id -> Unix time): not in the CloudEvent, which is the producer's, unchanged since it was published.
Celery sends a task's headers again with its retries, and a batch passes each event's time on to the task that
retries it alone, so `InboxMessage.delivered_at` is the first receipt however many tries the handling took. A
task message without the header (sent before workers recorded it, or by hand) is handled as ever, with no time.

Another header lists the events the broker marked redelivered: their handling may have run before, up to a dead
letter whose acknowledgement was lost, so a handler that files one looks for it first (eventbus.deadletters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

RECEIVED_HEADER = "eventbus_received"
REDELIVERED_HEADER = "eventbus_redelivered"


def receipt_headers(received: Mapping[str, float] | None, redelivered: Iterable[str] = ()) -> dict[str, Any]:
    """The headers of a task message that carries these receipt times (event id -> Unix time) and the ids of the
    events among them that the broker redelivered."""
    headers: dict[str, Any] = {RECEIVED_HEADER: dict(received)} if received else {}
    if again := sorted(redelivered):
        headers[REDELIVERED_HEADER] = again
    return headers


def received_times(request: Any) -> dict[str, float]:
    """The receipt times that the running task's message carries (Celery makes each header an attribute of the
    request); empty when it carries none."""
    value = getattr(request, RECEIVED_HEADER, None)
    if not isinstance(value, dict):
        return {}
    return {str(event_id): float(at) for event_id, at in value.items() if isinstance(at, int | float)}


def received_at(received: Mapping[str, float], event_id: str) -> datetime | None:
    """When the intake received `event_id`, if `received` says."""
    at = received.get(event_id)
    return None if at is None else datetime.fromtimestamp(at, tz=UTC)


def delivered_before(request: Any, event_id: str) -> bool:
    """Whether the running task's handling of `event_id` may have run before: the broker redelivered the event to
    the intake (the header), or redelivered this task's own message (a retry, sent through the broker)."""
    if (getattr(request, "delivery_info", None) or {}).get("redelivered"):
        return True
    value = getattr(request, REDELIVERED_HEADER, None)
    return isinstance(value, list) and event_id in value
