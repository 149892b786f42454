"""The outbox relay: publishes committed events in order, with batched publisher confirms.

It wakes when a transaction commits (a Redis nudge) and at least every poll interval, so rows
left behind by a crash or a broker outage go out without a manual step. A row is marked sent
only after the broker confirmed it; a crash in between publishes it again, which the consumers'
inboxes absorb.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta

import redis
from celery import current_app
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from eventbus.envelope import CONTENT_TYPE
from eventbus.models import OutboxMessage
from eventbus.outbox import nudge_channel
from eventbus.publisher import ConfirmingPublisher, Outgoing, batch_connection
from eventbus.topology import declare_all

logger = logging.getLogger(__name__)


def pending_rows(*, limit: int, older_than: timedelta | None = None) -> list[OutboxMessage]:
    rows = OutboxMessage.objects.filter(sent_at__isnull=True).order_by("id")
    if older_than is not None:
        rows = rows.filter(created_at__lte=timezone.now() - older_than)
    return list(rows.only("id", "event_id", "exchange", "routing_key", "body")[:limit])


def publish_rows(publisher: ConfirmingPublisher, rows: list[OutboxMessage]) -> int:
    """Publish `rows` in id order, wait for every confirm, then mark them sent."""
    if not rows:
        return 0
    publisher.publish_batch(
        Outgoing(
            exchange=row.exchange,
            routing_key=row.routing_key,
            body=json.dumps(row.body, separators=(",", ":")).encode(),
            content_type=CONTENT_TYPE,
            message_id=str(row.event_id),
        )
        for row in rows
    )
    with transaction.atomic():
        OutboxMessage.objects.filter(id__in=[row.id for row in rows]).update(
            sent_at=timezone.now(), publish_attempts=F("publish_attempts") + 1
        )
    return len(rows)


def sweep(*, older_than: timedelta | None = None, limit: int | None = None) -> int:
    """Publish every pending row (or those older than `older_than`) once; return how many went out."""
    limit = limit or settings.EVENTBUS_RELAY_BATCH
    total = 0
    with batch_connection(current_app) as connection:
        connection.ensure_connection(max_retries=3)
        publisher = ConfirmingPublisher(connection)
        while rows := pending_rows(limit=limit, older_than=older_than):
            total += publish_rows(publisher, rows)
            if len(rows) < limit:
                break
    return total


class Relay:
    """The long-running relay process behind `manage.py relay`."""

    def __init__(self, *, batch_size: int, poll_seconds: float) -> None:
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self._stop = False
        self._pubsub = None

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        delay = 0.5
        while not self._stop:
            try:
                with batch_connection(current_app) as connection:
                    connection.ensure_connection(max_retries=1)
                    declare_all(connection, current_app)
                    logger.info("relay connected to %s", connection.as_uri())
                    delay = 0.5
                    self._loop(ConfirmingPublisher(connection))
            except Exception as error:  # broker or database away: rows wait in the outbox
                logger.warning("relay: %s; retrying in %.1fs", error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                close_old_connections()

    def _loop(self, publisher: ConfirmingPublisher) -> None:
        while not self._stop:
            rows = pending_rows(limit=self.batch_size)
            sent = publish_rows(publisher, rows)
            if sent:
                logger.info("relay published %d event(s)", sent)
            if sent < self.batch_size:
                self._wait_for_nudge()

    def _wait_for_nudge(self) -> None:
        try:
            if self._pubsub is None:
                client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=self.poll_seconds + 5)
                self._pubsub = client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(nudge_channel())
            if self._pubsub.get_message(timeout=self.poll_seconds):
                while self._pubsub.get_message(timeout=0):  # one pass covers every nudge so far
                    pass
        except redis.RedisError as error:
            logger.debug("relay: no nudges from Redis (%s); polling", error)
            self._pubsub = None
            time.sleep(self.poll_seconds)
