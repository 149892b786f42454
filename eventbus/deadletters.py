"""The dead-letter store: what could not be handled, why, and a way to send it through again."""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.utils import timezone
from kombu import Connection

from eventbus.envelope import CONTENT_TYPE
from eventbus.models import DeadLetter
from eventbus.subscriptions import subscribers

REPLAY_HEADER = "x-replayed-from-dead-letter"


class NotReplayable(Exception):
    """A dead letter that must not be sent through again."""


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
) -> DeadLetter:
    """File a message that could not be handled; the body is kept as text and never deserialized here."""
    if isinstance(body, dict):
        text = json.dumps(body)
        content_type = content_type or CONTENT_TYPE
    elif isinstance(body, bytes):
        text = body.decode("utf-8", errors="backslashreplace")
    else:
        text = body
    # PostgreSQL text cannot hold NUL, which binary (pickle) bodies carry; kept escaped, like other bytes.
    text = text.replace("\x00", "\\x00")
    event_id, event_type = _identify(text) if content_type in ("", CONTENT_TYPE, "application/json") else ("", "")
    return DeadLetter.objects.create(
        reason=reason,
        queue=queue,
        handler=handler,
        event_id=event_id,
        event_type=event_type,
        content_type=content_type,
        body=text,
        headers=_jsonable(headers or {}),
        error=error[:10_000].replace("\x00", "\\x00"),
        traceback=traceback[-20_000:].replace("\x00", "\\x00"),
        attempts=attempts,
    )


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


def replay_queue(dead_letter: DeadLetter) -> str:
    """The event queue to send a dead letter back to: its consumer's event queue."""
    for subscriber in subscribers():
        if dead_letter.queue in (subscriber.queue, subscriber.task_queue, f"{subscriber.queue}.dlq",
                                 f"{subscriber.task_queue}.dlq"):  # fmt: skip
            return subscriber.queue
    return dead_letter.queue


def replay(dead_letter: DeadLetter, connection: Connection, *, body: str | None = None) -> str:
    """Record the replay of the (possibly corrected) body, then publish it with confirms to the original event
    queue, naming the dead letter: the intake takes a replay as authentic only when the store holds that body
    (see eventbus.authenticity), so the record commits first. A forged dead letter is never replayed."""
    if dead_letter.reason == DeadLetter.Reason.FORGED:
        raise NotReplayable(f"dead letter #{dead_letter.pk} is forged ({dead_letter.error}): kept, never replayed")
    text = dead_letter.body if body is None else body
    queue = replay_queue(dead_letter)
    with transaction.atomic():
        locked = DeadLetter.objects.select_for_update().get(pk=dead_letter.pk)
        locked.body = text
        locked.replayed_at = timezone.now()
        locked.replay_count += 1
        locked.save(update_fields=["body", "replayed_at", "replay_count"])
        transaction.on_commit(
            lambda: connection.Producer().publish(
                text.encode(),
                exchange="",
                routing_key=queue,
                content_type=locked.content_type or CONTENT_TYPE,
                content_encoding="utf-8",
                delivery_mode=2,
                headers={REPLAY_HEADER: locked.pk},
                retry=True,
            )
        )
    return queue


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
