"""Publishing: an event is written to the outbox inside the transaction of the change it announces."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings
from django.db import transaction

from eventbus import tracing
from eventbus.commit_hooks import on_commit_once
from eventbus.contracts import EventData
from eventbus.envelope import CloudEvent, new_event
from eventbus.models import OutboxMessage
from eventbus.names import event_exchange_name

logger = logging.getLogger(__name__)
NUDGE_CHANNEL = "eventbus:outbox"

# The event whose handler is running, so that what it publishes inherits correlation and causation.
current_event: contextvars.ContextVar[CloudEvent | None] = contextvars.ContextVar("current_event", default=None)


# Outbox rows publish() holds back for written_together() to write at once; None: each is written as published.
_held_rows: contextvars.ContextVar[list[OutboxMessage] | None] = contextvars.ContextVar("held_rows", default=None)


class HopLimitExceeded(RuntimeError):
    """Publishing would extend a causation chain past EVENTBUS_MAX_HOPS: a loop, stopped."""


def publish(data: EventData, *, correlation_id: str = "") -> CloudEvent:
    """Record `data` as an event to publish once the surrounding transaction commits.

    Inside a handler the event continues the handled event's chain (its correlation id, the
    handled event as causation); elsewhere it starts a chain under `correlation_id`. It carries the
    current trace context (eventbus.tracing.carried)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("publish() must run inside the transaction whose change the event announces")
    cause = current_event.get()
    if cause is not None:
        hops = cause.hops + 1
        if hops > settings.EVENTBUS_MAX_HOPS:
            raise HopLimitExceeded(f"{cause.type} {cause.id} is {cause.hops} hops from its origin")
        chain = {"correlation_id": cause.correlationid, "causation_id": cause.id, "hops": hops}
    else:
        chain = {"correlation_id": correlation_id}
    contract = type(data).contract
    exchange = event_exchange_name(contract.producer)
    with tracing.outbox_span(contract.type, exchange):
        event = new_event(data, **chain, **tracing.carried(cause))
        tracing.describe(event)
        row = OutboxMessage(
            event_id=event.id,
            event_type=event.type,
            exchange=exchange,
            routing_key=contract.routing_key,
            correlation_id=event.correlationid or event.id,
            body=event.to_dict(),
        )
        if (held := _held_rows.get()) is not None:
            held.append(row)
        else:
            row.save(force_insert=True)
    on_commit_once(_nudge_after_commit)
    return event


@contextmanager
def written_together() -> Iterator[None]:
    """Hold back the outbox rows publish() records inside the block and write them in one statement when it ends
    without error (a batch of events handled whole: one INSERT for what all its handlers publish). The rows still
    commit with the transaction around the block, which must hold it whole."""
    rows: list[OutboxMessage] = []
    token = _held_rows.set(rows)
    try:
        yield
    finally:
        _held_rows.reset(token)
    OutboxMessage.objects.bulk_create(rows)


_redis: redis.Redis | None = None


def nudge_relay() -> None:
    """Wake the relay now rather than at its next sweep; losing a nudge only costs latency."""
    global _redis
    try:
        if _redis is None:
            _redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.25, socket_connect_timeout=0.25)
        _redis.publish(nudge_channel(), b"1")
    except redis.RedisError as error:
        logger.debug("relay nudge failed (the relays' polling publishes): %s", error)


def _nudge_after_commit(_: set) -> None:
    nudge_relay()


def nudge_channel() -> str:
    return f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:{NUDGE_CHANNEL}"
