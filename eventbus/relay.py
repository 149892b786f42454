"""The outbox relay: publishes committed events in order, with batched publisher confirms.

It wakes when a transaction commits (a Redis nudge) and at least every poll interval, so rows
left behind by a crash or a broker outage go out without a manual step. Relays run side by side:
each claims its batch under a lease (eventbus.outbox_claims) and marks sent only what the broker
confirmed and it still holds. A crash in between publishes a row again, which the consumers'
inboxes absorb.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from celery import current_app
from django.conf import settings
from django.db import close_old_connections, transaction
from kombu import Connection

from eventbus.envelope import CONTENT_TYPE
from eventbus.models import OutboxMessage
from eventbus.outbox import nudge_channel
from eventbus.outbox_claims import (
    outbox_claim,
    outbox_mark_sent,
    outbox_record_failures,
    outbox_release,
    outbox_release_all,
)
from eventbus.publisher import ConfirmingPublisher, Outgoing, batch_connection
from eventbus.topology import declare_all

logger = logging.getLogger(__name__)


def relay_name() -> str:
    """A relay's default name, unique among live relays: its host and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def confirming_publisher(connection: Connection) -> ConfirmingPublisher:
    """A publisher whose confirm wait fits inside the relay's lease."""
    return ConfirmingPublisher(connection, confirm_timeout=settings.EVENTBUS_RELAY_CONFIRM_TIMEOUT_SECONDS)


@dataclass
class BatchOutcome:
    """What the broker said about a claimed batch, to be written to its rows."""

    claimer: str
    confirmed: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # row id -> why

    def record(self) -> int:
        """Mark the confirmed rows sent and the refused ones failed; return how many were marked sent."""
        if not (self.confirmed or self.refused):
            return 0  # no write transaction: on SQLite it would queue behind the workers' for nothing
        with transaction.atomic():
            sent = outbox_mark_sent(claimer=self.claimer, ids=self.confirmed)
            outbox_record_failures(claimer=self.claimer, failures=self.refused)
        for row_id, reason in self.refused.items():
            logger.warning("relay %s: outbox row %s not published: %s", self.claimer, row_id, reason)
        return sent


def publish_rows(publisher: ConfirmingPublisher, rows: list[OutboxMessage], *, claimer: str) -> BatchOutcome:
    """Publish claimed `rows` in id order and wait for the broker's word on each. When the
    connection fails midway, the rows are given back and the error raised."""
    outcome = BatchOutcome(claimer)
    if not rows:
        return outcome
    try:
        refused = publisher.publish_batch(
            Outgoing(
                exchange=row.exchange,
                routing_key=row.routing_key,
                body=json.dumps(row.body, separators=(",", ":")).encode(),
                content_type=CONTENT_TYPE,
                message_id=str(row.event_id),
            )
            for row in rows
        )
    except Exception as error:
        outbox_release(claimer=claimer, ids=[row.id for row in rows], error=f"{type(error).__name__}: {error}")
        raise
    for row in rows:
        if (reason := refused.get(str(row.event_id))) is not None:
            outcome.refused[row.id] = reason
        else:
            outcome.confirmed.append(row.id)
    return outcome


def sweep(*, older_than: timedelta | None = None, limit: int | None = None, name: str | None = None) -> int:
    """Publish every row no relay holds (or only those older than `older_than`) once, claiming
    them as `name` like any relay; return how many went out."""
    limit = limit or settings.EVENTBUS_RELAY_BATCH
    name = name or f"sweep-{relay_name()}"
    total = 0
    with batch_connection(current_app) as connection:
        connection.ensure_connection(max_retries=3)
        publisher = confirming_publisher(connection)
        while True:
            rows = outbox_claim(claimer=name, limit=limit, older_than=older_than)
            total += publish_rows(publisher, rows, claimer=name).record()
            if len(rows) < limit:
                return total


class Relay:
    """The long-running relay process behind `manage.py relay`."""

    def __init__(self, *, name: str, batch_size: int, poll_seconds: float) -> None:
        self.name = name
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self._stop = False
        self._pubsub = None
        self._unrecorded: BatchOutcome | None = None  # confirmed, but the database was away

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        delay = 0.5
        freed = False
        while not self._stop:
            try:
                if not freed:
                    outbox_release_all(claimer=self.name)
                    freed = True
                with batch_connection(current_app) as connection:
                    connection.ensure_connection(max_retries=1)
                    declare_all(connection, current_app)
                    logger.info("relay %s connected to %s", self.name, connection.as_uri())
                    delay = 0.5
                    self._loop(confirming_publisher(connection))
            except Exception as error:  # broker or database away: rows wait in the outbox
                logger.warning("relay %s: %s; retrying in %.1fs", self.name, error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                close_old_connections()

    def _loop(self, publisher: ConfirmingPublisher) -> None:
        while not self._stop:
            if self._unrecorded is not None:
                # Recorded late rather than published again once the lease runs out.
                self._unrecorded.record()
                self._unrecorded = None
            rows = outbox_claim(claimer=self.name, limit=self.batch_size)
            self._unrecorded = publish_rows(publisher, rows, claimer=self.name)
            sent = self._unrecorded.record()
            self._unrecorded = None
            if sent:
                logger.info("relay %s published %d event(s)", self.name, sent)
            if len(rows) < self.batch_size:
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
