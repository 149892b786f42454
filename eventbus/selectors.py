"""Event bus reads: the timeline of a saga (every event of one correlation id and who handled it), and its waterfall
(each event's way through the pipeline: written, published, delivered, handled, laid out in time)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from django.utils import timezone
from django_celery_results.models import TaskResult

from eventbus.models import InboxMessage, OutboxMessage
from eventbus.subscriptions import handler_by_name, subscribers
from eventbus.tracing import trace_id


@dataclass(frozen=True)
class HandlerRun:
    handler: str
    task_id: str
    state: str  # Celery's: PENDING, STARTED, RETRY, SUCCESS, FAILURE
    attempt: int | None
    outcome: str | None  # done, duplicate
    finished_at: datetime | None
    # From the inbox row, once the handler's effect committed: when the worker's intake received the event (not
    # recorded before eventbus.receipts existed) and when the handling began.
    delivered_at: datetime | None = None
    started_at: datetime | None = None


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    event_id: str
    type: str
    source: str
    causation_id: str
    published_at: datetime | None  # when the relay recorded the broker's confirm
    handlers: list[HandlerRun] = field(default_factory=list)
    relayed_at: datetime | None = None  # when the relay took the row for its last attempt to publish it
    trace_id: str = ""  # from the event's W3C traceparent, when it carries one


def timeline(correlation_id: str) -> list[TimelineEntry]:
    """Every event published in a saga, oldest first, each with the handler tasks it caused (a handler's own
    task, or the batch task that handled the event with others)."""
    rows = list(OutboxMessage.objects.filter(correlation_id=correlation_id).order_by("id"))
    inbox = {
        (handler, str(event_id)): _Handled(*values)
        for handler, event_id, *values in InboxMessage.objects.filter(correlation_id=correlation_id).values_list(
            "handler", "event_id", "task_id", "delivered_at", "processed_at"
        )
    }
    runs = {
        str(row.event_id): [
            (name, inbox[(name, str(row.event_id))].task_id if (name, str(row.event_id)) in inbox else derived)
            for name, derived in _handler_tasks(row)
        ]
        for row in rows
    }
    task_ids = {task_id for pairs in runs.values() for _, task_id in pairs}
    results = {r.task_id: r for r in TaskResult.objects.filter(task_id__in=task_ids)}
    entries = []
    for row in rows:
        event_id = str(row.event_id)
        handlers = [
            _run(name, task_id, event_id, results.get(task_id), inbox.get((name, event_id)))
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
                relayed_at=row.last_attempt_at,
                trace_id=trace_id(row.body.get("traceparent")),
            )
        )
    return entries


class _Handled(NamedTuple):
    """What a handler's inbox row says of its handling."""

    task_id: str
    delivered_at: datetime | None
    started_at: datetime | None


def _handler_tasks(row: OutboxMessage) -> list[tuple[str, str]]:
    """(handler, task id) of every subscribed handler, as its own task: task ids are derived, so no lookup is needed."""
    event_id = str(row.event_id)
    return [(h.name, h.task_id(event_id)) for s in subscribers() for h in s.handlers_for(row.event_type)]


def _run(handler: str, task_id: str, event_id: str, result: TaskResult | None, handled: _Handled | None) -> HandlerRun:
    delivered_at, started_at = (handled.delivered_at, handled.started_at) if handled else (None, None)
    if result is None:
        state = "SUCCESS" if handled else "PENDING"
        return HandlerRun(handler, task_id, state, None, None, None, delivered_at, started_at)
    outcome = attempt = None
    if result.status == "SUCCESS" and result.result:
        value = json.loads(result.result)
        if isinstance(value, dict) and isinstance(value.get("events"), list):  # a batch: find this event in it
            entry = next((e for e in value["events"] if isinstance(e, dict) and e.get("id") == event_id), {})
            outcome, attempt = (entry.get("handlers") or {}).get(handler), 1
        elif isinstance(value, dict):
            outcome, attempt = value.get("outcome"), value.get("attempt")
    return HandlerRun(handler, task_id, result.status, attempt, outcome, result.date_done, delivered_at, started_at)


@dataclass(frozen=True)
class Hop:
    """A step of an event's way: when (None while pending, or when it was not recorded), how long after the
    saga's first event, and how long since the step before it that has a time."""

    name: str  # written, published, delivered, started, handled
    at: datetime | None
    offset: timedelta | None
    took: timedelta | None


@dataclass(frozen=True)
class Segment:
    """A stretch of a lane's bar, from `start` to `end` after the saga's first event."""

    kind: str  # outbox, broker, queued (in the task queue, retries included), handler, pending, failed
    start: timedelta
    end: timedelta


@dataclass(frozen=True)
class Lane:
    """A row of the waterfall: an event (hops written, published) or one of its subscribed handlers (delivered,
    started, handled)."""

    event_id: str
    event_type: str
    depth: int  # along the causation chain: 0 for the event that started the saga
    hops: list[Hop]
    segments: list[Segment]
    status: str  # done, pending, failed (dead-lettered)
    handler: str = ""
    task_id: str = ""
    state: str = ""  # the handler task's, as Celery's result backend has it (RETRY while it waits to try again)
    attempt: int | None = None
    batched: bool = False  # handled by a `<service>.handle_batch` task, with other events


@dataclass(frozen=True)
class Waterfall:
    """A saga laid out in time, from its first event written to its last hop (to now while one is pending)."""

    start: datetime | None
    span: timedelta
    trace_ids: list[str]
    lanes: list[Lane]

    @property
    def complete(self) -> bool:
        return bool(self.lanes) and all(lane.status == "done" for lane in self.lanes)


def waterfall(*, correlation_id: str, now: datetime | None = None) -> Waterfall:
    """Every event of a saga in causation order, each followed by its subscribed handlers, with the time of each
    hop: written and published (the outbox row), delivered (the worker's intake received it), started and handled
    (the inbox row, the task's result). Built from what the pipeline records; no tracing backend needed."""
    entries = _causation_order(timeline(correlation_id))
    if not entries:
        return Waterfall(None, timedelta(0), [], [])
    runs = [run for entry, _ in entries for run in entry.handlers]
    pending = any(e.published_at is None for e, _ in entries) or any(_status(run) == "pending" for run in runs)
    known = [e.at for e, _ in entries] + [e.published_at for e, _ in entries if e.published_at]
    known += [at for run in runs for at in (run.delivered_at, run.started_at, run.finished_at) if at]
    start = min(known)
    end = max([*known, now or timezone.now()] if pending else known)
    lanes = []
    for entry, depth in entries:
        lanes.append(_event_lane(entry, depth, start, end))
        lanes.extend(_handler_lane(entry, run, depth, start, end) for run in entry.handlers)
    trace_ids = list(dict.fromkeys(entry.trace_id for entry, _ in entries if entry.trace_id))
    return Waterfall(start, end - start, trace_ids, lanes)


def _causation_order(entries: list[TimelineEntry]) -> list[tuple[TimelineEntry, int]]:
    """Each event after the one that caused it (siblings oldest first), with its depth in the causation chain."""
    ids = {entry.event_id for entry in entries}
    children: dict[str, list[TimelineEntry]] = defaultdict(list)
    for entry in entries:
        if entry.causation_id in ids and entry.causation_id != entry.event_id:
            children[entry.causation_id].append(entry)
    roots = [e for e in entries if e.causation_id not in ids or e.causation_id == e.event_id]
    ordered: list[tuple[TimelineEntry, int]] = []
    stack = [(root, 0) for root in reversed(roots)]
    while stack:
        entry, depth = stack.pop()
        ordered.append((entry, depth))
        stack.extend((child, depth + 1) for child in reversed(children[entry.event_id]))
    return ordered


def _status(run: HandlerRun) -> str:
    if run.started_at is not None:  # its inbox row committed with its effect
        return "done"
    return "failed" if run.state == "FAILURE" else "pending"


def _event_lane(entry: TimelineEntry, depth: int, start: datetime, end: datetime) -> Lane:
    hops = _hops([("written", entry.at), ("published", entry.published_at)], start)
    status = "done" if entry.published_at else "pending"
    segments = _segments([(None, entry.at), ("outbox", entry.published_at)], status, start, end)
    return Lane(entry.event_id, entry.type, depth, hops, segments, status)


def _handler_lane(entry: TimelineEntry, run: HandlerRun, depth: int, start: datetime, end: datetime) -> Lane:
    status = _status(run)
    # The result's date_done is when the task ended, after the commit: a batch's, for an event it handled.
    handled = run.finished_at if status != "pending" else None
    since = _publish_began(entry) or entry.at
    hops = _hops([("delivered", run.delivered_at), ("started", run.started_at), ("handled", handled)], start, since)
    ran = "failed" if status == "failed" else "handler"
    points = [(None, since), ("broker", run.delivered_at), ("queued", run.started_at), (ran, handled)]
    segments = _segments(points, status, start, end)
    # The timeline lists the handlers subscribed now, so each has a name handler_by_name knows.
    batched = status == "done" and run.task_id != handler_by_name(run.handler).task_id(entry.event_id)
    return Lane(
        entry.event_id,
        entry.type,
        depth,
        hops,
        segments,
        status,
        handler=run.handler,
        task_id=run.task_id,
        state=run.state,
        attempt=run.attempt,
        batched=batched,
    )


def _publish_began(entry: TimelineEntry) -> datetime | None:
    """When the relay began publishing the event (its last claim of the row): the broker's confirm may reach the
    relay after a worker received the event, so the stretch to the intake is measured from here."""
    if entry.published_at is None:
        return None
    return min(entry.relayed_at or entry.published_at, entry.published_at)


def _hops(points: list[tuple[str, datetime | None]], start: datetime, since: datetime | None = None) -> list[Hop]:
    hops = []
    for name, at in points:
        took = at - since if at is not None and since is not None else None
        hops.append(Hop(name, at, at - start if at is not None else None, took))
        since = at or since
    return hops


def _segments(
    points: list[tuple[str | None, datetime | None]], status: str, start: datetime, end: datetime
) -> list[Segment]:
    """The bar of a lane: a segment to each point that has a time from the one before (the point's kind names
    that stretch), then, while the lane is pending, one from its last point to the end."""
    segments, last = [], None
    for kind, at in points:
        if at is None:
            continue
        if last is not None and kind is not None and at > last:
            segments.append(Segment(kind, last - start, at - start))
        last = at if last is None else max(last, at)
    if status == "pending" and last is not None:
        segments.append(Segment("pending", last - start, end - start))
    return segments
