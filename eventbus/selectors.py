"""Event bus reads: the timeline of a saga (every event of one correlation id and who handled it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from django_celery_results.models import TaskResult

from eventbus.models import InboxMessage, OutboxMessage
from eventbus.subscriptions import subscribers


@dataclass(frozen=True)
class HandlerRun:
    handler: str
    task_id: str
    state: str  # Celery's: PENDING, STARTED, RETRY, SUCCESS, FAILURE
    attempt: int | None
    outcome: str | None  # done, duplicate
    finished_at: datetime | None


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    event_id: str
    type: str
    source: str
    causation_id: str
    published_at: datetime | None
    handlers: list[HandlerRun] = field(default_factory=list)


def timeline(correlation_id: str) -> list[TimelineEntry]:
    """Every event published in a saga, oldest first, each with the handler tasks it caused (a handler's own
    task, or the batch task that handled the event with others)."""
    rows = list(OutboxMessage.objects.filter(correlation_id=correlation_id).order_by("id"))
    inbox = InboxMessage.objects.filter(correlation_id=correlation_id).values_list("handler", "event_id", "task_id")
    handled_by = {(handler, str(event_id)): task_id for handler, event_id, task_id in inbox}
    runs = {
        str(row.event_id): [
            (name, handled_by.get((name, str(row.event_id))) or derived) for name, derived in _handler_tasks(row)
        ]
        for row in rows
    }
    task_ids = {task_id for pairs in runs.values() for _, task_id in pairs}
    results = {r.task_id: r for r in TaskResult.objects.filter(task_id__in=task_ids)}
    entries = []
    for row in rows:
        event_id = str(row.event_id)
        handlers = [
            _run(name, task_id, event_id, results.get(task_id), (name, event_id) in handled_by)
            for name, task_id in runs[event_id]
        ]
        entries.append(
            TimelineEntry(
                at=row.created_at,
                event_id=event_id,
                type=row.event_type,
                source=row.body.get("source", ""),
                causation_id=row.body.get("causationid", ""),
                published_at=row.sent_at,
                handlers=handlers,
            )
        )
    return entries


def _handler_tasks(row: OutboxMessage) -> list[tuple[str, str]]:
    """(handler, task id) of every subscribed handler, as its own task: task ids are derived, so no lookup is needed."""
    event_id = str(row.event_id)
    return [(h.name, h.task_id(event_id)) for s in subscribers() for h in s.handlers_for(row.event_type)]


def _run(handler: str, task_id: str, event_id: str, result: TaskResult | None, handled: bool) -> HandlerRun:
    if result is None:
        return HandlerRun(handler, task_id, "SUCCESS" if handled else "PENDING", None, None, None)
    outcome = attempt = None
    if result.status == "SUCCESS" and result.result:
        value = json.loads(result.result)
        if isinstance(value, dict) and isinstance(value.get("events"), list):  # a batch: find this event in it
            entry = next((e for e in value["events"] if isinstance(e, dict) and e.get("id") == event_id), {})
            outcome, attempt = (entry.get("handlers") or {}).get(handler), 1
        elif isinstance(value, dict):
            outcome, attempt = value.get("outcome"), value.get("attempt")
    return HandlerRun(handler, task_id, result.status, attempt, outcome, result.date_done)
