"""The outbox relay: publishes committed events in order, with batched publisher confirms.

It wakes when a transaction commits (a Redis nudge) and at least every poll interval, so rows
left behind by a crash or a broker outage go out without a manual step. Relays run side by side:
each claims its batch under a lease (eventbus.outbox_claims) and marks sent only what the broker
confirmed and it still holds. A crash in between publishes a row again, which the consumers'
inboxes absorb.

Each event leaves as its producer's broker user, with that user as its AMQP `user_id` (RabbitMQ
refuses any other): the relay connects once per producer, with the credentials of
EVENTBUS_PUBLISHER_CREDENTIALS, to the host and vhost of Celery's broker URL. A batch goes out
producer by producer, each producer's rows in id order.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field

import redis
from celery import Celery, current_app
from django.conf import settings
from django.db import transaction
from kombu import Connection

from eventbus import metrics, tracing
from eventbus.contracts import UnknownEventType
from eventbus.envelope import CONTENT_TYPE
from eventbus.handling import reconnect_database
from eventbus.identities import producers, publisher_of, publisher_passwords, service_user, url_as
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

logger = logging.getLogger(__name__)


def relay_name() -> str:
    """A relay's default name, unique among live relays: its host and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Publishers:
    """A confirming publisher per producer's broker user, each on a connection logged in as that user."""

    def __init__(self, app: Celery, passwords: dict[str, str]) -> None:
        self.app = app
        self.passwords = passwords
        self._connections: list[Connection] = []
        self._publishers: dict[str, ConfirmingPublisher] = {}

    def __enter__(self) -> Publishers:
        return self

    def __exit__(self, *_: object) -> None:
        for connection in self._connections:
            connection.release()
        self._connections.clear()
        self._publishers.clear()

    def connect_all(self) -> list[str]:
        """Log in as every producer now, so that a refused login shows at once; return the users."""
        users = [service_user(producer) for producer in producers()]
        for user in users:
            self.get(user)
        return users

    def get(self, user: str) -> ConfirmingPublisher:
        """The publisher of `user`, connected on first use; LookupError when the relay has no password for it."""
        if user not in self._publishers:
            if user not in self.passwords:
                raise LookupError(f"the relay has no credentials for the broker user {user!r}")
            connection = batch_connection(self.app, url_as(self.app.conf.broker_url, user, self.passwords[user]))
            self._connections.append(connection)
            connection.ensure_connection(max_retries=1)
            # The confirm wait must fit inside the relay's lease.
            timeout = settings.EVENTBUS_RELAY_CONFIRM_TIMEOUT_SECONDS
            self._publishers[user] = ConfirmingPublisher(connection, confirm_timeout=timeout)
        return self._publishers[user]


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
        if not self.refused:  # the usual case: one statement, no transaction around it
            return outbox_mark_sent(claimer=self.claimer, ids=self.confirmed)
        with transaction.atomic():
            sent = outbox_mark_sent(claimer=self.claimer, ids=self.confirmed)
            outbox_record_failures(claimer=self.claimer, failures=self.refused)
        for row_id, reason in self.refused.items():
            logger.warning("relay %s: outbox row %s not published: %s", self.claimer, row_id, reason)
        return sent


def publish_rows(publishers: Publishers, rows: list[OutboxMessage], *, claimer: str) -> BatchOutcome:
    """Publish claimed `rows`, each as its producer, and wait for the broker's word on each. When a
    connection fails midway, the rows are given back and the error raised."""
    outcome = BatchOutcome(claimer)
    by_user: dict[str, list[OutboxMessage]] = defaultdict(list)
    for row in rows:
        try:
            by_user[publisher_of(row.event_type)].append(row)
        except UnknownEventType as error:
            outcome.refused[row.id] = f"{error}: no producer to publish it as"
    try:
        # Every producer's rows go out before any confirm is awaited: the broker writes them at once, and the
        # batch waits about as long as its slowest producer's, not the sum of them.
        sent = []
        for user, group in by_user.items():
            try:
                publisher = publishers.get(user)
            except LookupError as error:
                outcome.refused.update((row.id, str(error)) for row in group)
                continue
            sent.append((user, group, publisher, time.time_ns()))
            publisher.send(
                Outgoing(
                    exchange=row.exchange,
                    routing_key=row.routing_key,
                    body=json.dumps(row.body, separators=(",", ":")).encode(),
                    content_type=CONTENT_TYPE,
                    message_id=str(row.event_id),
                    user_id=user,
                )
                for row in group
            )
        for user, group, publisher, started in sent:
            refused = publisher.wait()
            tracing.published(group, started=started, refused=refused)
            for row in group:
                if (reason := refused.get(str(row.event_id))) is not None:
                    outcome.refused[row.id] = reason
                else:
                    outcome.confirmed.append(row.id)
                    metrics.event_published(row.body.get("time"), producer=user)
    except Exception as error:
        outbox_release(claimer=claimer, ids=[row.id for row in rows], error=f"{type(error).__name__}: {error}")
        raise
    return outcome


def sweep(*, limit: int | None = None, name: str | None = None) -> int:
    """Publish every row no relay holds once, claiming them as `name` like any relay (`manage.py relay
    --once`); return how many went out."""
    limit = limit or settings.EVENTBUS_RELAY_BATCH
    name = name or f"sweep-{relay_name()}"
    total = 0
    with Publishers(current_app, publisher_passwords()) as publishers:
        while True:
            rows = outbox_claim(claimer=name, limit=limit)
            total += publish_rows(publishers, rows, claimer=name).record()
            if len(rows) < limit:
                return total


class Relay:
    """The long-running relay process behind `manage.py relay`."""

    def __init__(self, *, name: str, batch_size: int, poll_seconds: float) -> None:
        self.passwords = publisher_passwords()  # ImproperlyConfigured at once when one is missing
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
                with Publishers(current_app, self.passwords) as publishers:
                    users = publishers.connect_all()
                    logger.info("relay %s connected as %s", self.name, ", ".join(users))
                    delay = 0.5
                    with tracing.calls_untraced():
                        self._loop(publishers)
            except Exception as error:  # broker or database away: rows wait in the outbox
                logger.warning("relay %s: %s; retrying in %.1fs", self.name, error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                # Closed, not just checked: a SQLite connection opened while the file could not be
                # written stays read-only, and Django's check (close_old_connections) keeps it.
                reconnect_database()

    def _loop(self, publishers: Publishers) -> None:
        while not self._stop:
            if self._unrecorded is not None:
                # Recorded late rather than published again once the lease runs out.
                self._unrecorded.record()
                self._unrecorded = None
            rows = outbox_claim(claimer=self.name, limit=self.batch_size)
            self._unrecorded = publish_rows(publishers, rows, claimer=self.name)
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
