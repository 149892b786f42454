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
    """Publish the (possibly corrected) body to the original event queue with confirms; record the replay."""
    text = dead_letter.body if body is None else body
    queue = replay_queue(dead_letter)
    with transaction.atomic():
        locked = DeadLetter.objects.select_for_update().get(pk=dead_letter.pk)
        producer = connection.Producer()
        producer.publish(
            text.encode(),
            exchange="",
            routing_key=queue,
            content_type=locked.content_type or CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            headers={"x-replayed-from-dead-letter": locked.pk},
            retry=True,
        )
        locked.body = text
        locked.replayed_at = timezone.now()
        locked.replay_count += 1
        locked.save(update_fields=["body", "replayed_at", "replay_count"])
    return queue
