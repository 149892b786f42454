"""When a worker's intake received each event, carried to the handler task and kept on the inbox row.

The intake puts the wall-clock time of receipt of every event it hands over in a header of the task message
(event id -> Unix time): not in the CloudEvent, which is the producer's, unchanged since it was published.
Celery sends a task's headers again with its retries, and a batch passes each event's time on to the task that
retries it alone, so `InboxMessage.delivered_at` is the first receipt however many tries the handling took. A
task message without the header (sent before workers recorded it, or by hand) is handled as ever, with no time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

RECEIVED_HEADER = "eventbus_received"


def receipt_headers(received: Mapping[str, float] | None) -> dict[str, Any]:
    """The headers of a task message that carries these receipt times (event id -> Unix time)."""
    return {RECEIVED_HEADER: dict(received)} if received else {}


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
