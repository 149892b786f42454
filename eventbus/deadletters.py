"""The dead-letter store: what could not be handled, why, failures grouped by fingerprint, and a way to send
a letter through again (as it is or corrected), each replay recorded."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Min, Q, QuerySet
from django.utils import timezone
from kombu import Connection
from pydantic import ValidationError

from eventbus import metrics
from eventbus.envelope import CONTENT_TYPE, PoisonMessage, from_dict
from eventbus.models import DeadLetter, DeadLetterReplay
from eventbus.retention import event_expired
from eventbus.subscriptions import Subscriber, subscribers

logger = logging.getLogger(__name__)

REPLAY_HEADER = "x-replayed-from-dead-letter"
# "ValueError: ..." as handling stores a handler's error; intake and broker errors are sentences, naming none.
_EXCEPTION_NAME = re.compile(r"([A-Za-z_][\w.]*):(?:\s|$)")
_NOT_JSON = object()
# An operator waits for the answer: a broker that stays away fails the replay (recorded) within seconds.
SEND_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 1, "interval_max": 2}


class NotReplayable(Exception):
    """A dead letter that must not be sent through again."""


class InvalidBody(ValueError):
    """A corrected body that would fail on its way (not JSON, not its contract, no handler for it): not sent."""


@dataclass(frozen=True)
class FailureGroup:
    """Dead letters that failed alike: the same event type, handler (or queue) and error class."""

    fingerprint: str
    total: int
    unhandled: int  # not replayed yet
    first_seen: datetime
    last_seen: datetime
    sample: DeadLetter  # the newest; it names the group's parts and shows a sample error

    @property
    def replayable(self) -> bool:
        return self.unhandled > 0 and self.sample.reason != DeadLetter.Reason.FORGED


def error_class_of(error: str, reason: str) -> str:
    """The exception class an error names, else its reason: a fingerprint part that ignores the details."""
    match = _EXCEPTION_NAME.match(error)
    return match.group(1)[:200] if match else reason


def fingerprint_of(*, event_type: str, consumer: str, error_class: str) -> str:
    """The key shared by letters that failed alike; `consumer` is the handler, or the queue when none ran."""
    return hashlib.sha256("\x1f".join((event_type, consumer, error_class)).encode()).hexdigest()[:16]


def store(
    *,
    reason: str,
    queue: str,
    body: bytes | str | dict[str, Any],
    error: str,
    handler: str = "",
    content_type: str = "",
    headers: dict[str, Any] | None = None,
    traceback: str = "",
    attempts: int = 1,
    redelivered: bool = False,
) -> DeadLetter:
    """File a message that could not be handled; the body is kept as text and never deserialized here.

    A message the broker `redelivered` may have been filed before its acknowledgement was lost (the worker or
    the broker died in between): when a letter of the same queue, handler and body is on file, that one is
    returned and nothing is filed. A message delivered for the first time is always filed, the same bytes sent
    twice included."""
    if isinstance(body, dict):
        text = json.dumps(body)
        content_type = content_type or CONTENT_TYPE
    elif isinstance(body, bytes):
        text = body.decode("utf-8", errors="backslashreplace")
    else:
        text = body
    # PostgreSQL text cannot hold NUL, which binary (pickle) bodies carry; kept escaped, like other bytes.
    text = text.replace("\x00", "\\x00")
    # A handler's letter names it: two handlers of one service can each file the same event from the same queue.
    digest = hashlib.sha256((f"{queue}\n{handler}\n{text}" if handler else f"{queue}\n{text}").encode()).hexdigest()
    if redelivered and (filed := DeadLetter.objects.filter(delivery_digest=digest).order_by("id").first()):
        logger.info("dead letter #%s from %s was delivered again; it is filed once", filed.pk, queue)
        return filed
    event_id, event_type = _identify(text) if content_type in ("", CONTENT_TYPE, "application/json") else ("", "")
    error_class = error_class_of(error, reason)
    letter = DeadLetter.objects.create(
        reason=reason,
        queue=queue,
        handler=handler,
        event_id=event_id,
        event_type=event_type,
        content_type=content_type,
        body=text,
        headers=_jsonable(headers or {}),
        error=error[:10_000].replace("\x00", "\\x00"),
        error_class=error_class,
        fingerprint=fingerprint_of(event_type=event_type, consumer=handler or queue, error_class=error_class),
        delivery_digest=digest,
        traceback=traceback[-20_000:].replace("\x00", "\\x00"),
        attempts=attempts,
    )
    metrics.dead_letter_stored(reason=reason, queue=queue)
    return letter


def _identify(text: str) -> tuple[str, str]:
    """Best-effort id and type of a JSON body, for searching; a poison body simply has neither."""
    try:
        raw = json.loads(text)
    except ValueError:
        return "", ""
    if not isinstance(raw, dict):
        return "", ""
    return str(raw.get("id", ""))[:200], str(raw.get("type", ""))[:200]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def groups(*, limit: int = 200) -> list[FailureGroup]:
    """Failure groups, the most recently failed first: one GROUP BY on the indexed fingerprint."""
    rows = list(
        DeadLetter.objects.values("fingerprint")
        .annotate(
            total=Count("id"),
            unhandled=Count("id", filter=Q(replayed_at__isnull=True)),
            first_seen=Min("created_at"),
            last_seen=Max("created_at"),
            sample_id=Max("id"),
        )
        .order_by("-last_seen")[:limit]
    )
    sample_ids = [row.pop("sample_id") for row in rows]
    samples = DeadLetter.objects.in_bulk(sample_ids)
    return [FailureGroup(**row, sample=samples[pk]) for row, pk in zip(rows, sample_ids, strict=True)]


def replayable() -> QuerySet[DeadLetter]:
    """Dead letters waiting for an operator that may be replayed: not replayed yet, and not forged."""
    return DeadLetter.objects.filter(replayed_at__isnull=True).exclude(reason=DeadLetter.Reason.FORGED)


def replay_queue(dead_letter: DeadLetter) -> str:
    """The event queue to send a dead letter back to: its consumer's event queue."""
    subscriber = _subscriber_of(dead_letter)
    return subscriber.queue if subscriber else dead_letter.queue


def _subscriber_of(dead_letter: DeadLetter) -> Subscriber | None:
    for subscriber in subscribers():
        if dead_letter.queue in subscriber.queues:
            return subscriber
    return None


def corrected_body(dead_letter: DeadLetter, text: str) -> str:
    """The body to send for an operator's correction `text`, once it passes what the event meets on its way
    (envelope, contract, hop limit, inbox window, a handler that reads it); raise InvalidBody otherwise.
    Text that says what the stored body says is no correction: the stored body goes unchanged."""
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise InvalidBody(f"not valid JSON: {error}") from None
    try:
        event = from_dict(raw)
    except PoisonMessage as error:
        raise InvalidBody(str(error)) from None
    if event.hops > settings.EVENTBUS_MAX_HOPS:
        raise InvalidBody(f"`hops` is {event.hops}, over the limit of {settings.EVENTBUS_MAX_HOPS}")
    if event_expired(event.time):
        raise InvalidBody(f"`time` {event.time} is older than the inbox window: the handler would refuse it")
    subscriber = _subscriber_of(dead_letter)
    if subscriber is not None:
        handlers = subscriber.handlers_for(event.type)
        if not handlers:
            raise InvalidBody(f"{subscriber.queue} has no handler for {event.type}")
        if dead_letter.handler and dead_letter.handler not in {h.name for h in handlers}:
            raise InvalidBody(f"{dead_letter.handler} does not handle {event.type}")
        for handler in handlers:
            try:
                event.payload(handler.contract)
            except (LookupError, ValidationError) as error:
                raise InvalidBody(f"{handler.name} cannot read it as {handler.contract.type}: {error}") from None
    return dead_letter.body if raw == _json_of(dead_letter.body) else json.dumps(raw, separators=(",", ":"))


def replay(dead_letter: DeadLetter, connection: Connection, *, actor: str, body: str | None = None) -> DeadLetterReplay:
    """Record the replay of the body (or of a correction, checked first: see corrected_body), then publish it with
    confirms to the original event queue, naming the dead letter: the intake takes a replay as authentic only
    when the store holds that body (see eventbus.authenticity), so the record commits first. The record says
    who replayed what, and whether the broker took it. A forged dead letter is never replayed."""
    if dead_letter.reason == DeadLetter.Reason.FORGED:
        raise NotReplayable(f"dead letter #{dead_letter.pk} is forged ({dead_letter.error}): kept, never replayed")
    correction = None if body is None else corrected_body(dead_letter, body)
    queue = replay_queue(dead_letter)
    with transaction.atomic():
        locked = DeadLetter.objects.select_for_update().get(pk=dead_letter.pk)
        text = locked.body if correction is None else correction
        record = DeadLetterReplay.objects.create(
            dead_letter=locked, actor=actor, queue=queue, body_before=locked.body, body_after=text
        )
        if record.edited:
            locked.body, locked.content_type = text, CONTENT_TYPE  # a correction is a checked CloudEvent
        locked.replayed_at = timezone.now()
        locked.replay_count += 1
        locked.save(update_fields=["body", "content_type", "replayed_at", "replay_count"])
        transaction.on_commit(lambda: _send(record, connection, content_type=locked.content_type or CONTENT_TYPE))
    return record


def replay_group(fingerprint: str, connection: Connection, *, actor: str) -> list[DeadLetterReplay]:
    """Replay, as they are, the letters of one failure group that wait for an operator."""
    letters = replayable().filter(fingerprint=fingerprint).order_by("id")
    return [replay(letter, connection, actor=actor) for letter in letters]


def _send(record: DeadLetterReplay, connection: Connection, *, content_type: str) -> None:
    try:
        connection.Producer().publish(
            record.body_after.encode(),
            exchange="",
            routing_key=record.queue,
            content_type=content_type,
            content_encoding="utf-8",
            delivery_mode=2,
            headers={REPLAY_HEADER: record.dead_letter_id},
            retry=True,
            retry_policy=SEND_RETRY,
        )
    except Exception as error:
        record.outcome, record.error = DeadLetterReplay.Outcome.FAILED, f"{type(error).__name__}: {error}"
        record.save(update_fields=["outcome", "error"])
        raise
    record.outcome = DeadLetterReplay.Outcome.SENT
    record.save(update_fields=["outcome"])


def readable_body(text: str) -> str:
    """A body for people: JSON indented, anything else as stored."""
    raw = _json_of(text)
    return text if raw is _NOT_JSON else json.dumps(raw, indent=2, ensure_ascii=False)


def replay_diff(record: DeadLetterReplay) -> str:
    """What the operator changed, as a unified diff of the readable bodies; empty when the body went unchanged."""
    if not record.edited:
        return ""
    before, after = readable_body(record.body_before), readable_body(record.body_after)
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), "stored", "sent", lineterm="")
    return "\n".join(lines)


def _json_of(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def replay_vouched(dead_letter_id: Any, body: bytes | str) -> bool:
    """Whether `body` (py-amqp decodes a utf-8 one) is what the store replayed as dead letter `dead_letter_id`."""
    try:
        pk = int(dead_letter_id)
    except (TypeError, ValueError):
        return False
    stored = (
        DeadLetter.objects.filter(pk=pk, replayed_at__isnull=False)
        .exclude(reason=DeadLetter.Reason.FORGED)
        .values_list("body", flat=True)
        .first()
    )
    text = body.decode("utf-8", errors="backslashreplace") if isinstance(body, bytes) else body
    return stored is not None and stored == text
