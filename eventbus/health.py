"""Pipeline health: queue figures from the RabbitMQ management API, Redis, outbox lag, dead letters, and the
figures apps add (`register_figures`, from their AppConfig.ready: the orders app adds orders per status).

The health page and the Prometheus `/metrics` endpoint both render what `pipeline_health()` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
import requests
from celery import current_app
from django.conf import settings
from django.db import connections
from django.db.models import QuerySet
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.retry import Retry

from eventbus.models import DeadLetter, InboxMessage, OutboxMessage
from eventbus.subscriptions import subscribers
from eventbus.topology import UNROUTED_QUEUE, dead_letter_queue

COUNT_CAP = 10_000  # rows a count reads before it settles for an estimate
MANAGEMENT_TIMEOUT = 2.0  # seconds: the page and a scrape must answer while the broker is away
REDIS_PING_TIMEOUT = 0.4  # seconds, to connect and again to answer: a hung Redis shows in under a second
QUEUE_COLUMNS = (
    "name,messages,messages_ready,messages_unacknowledged,consumers,"
    "message_stats.publish_details.rate,message_stats.deliver_get_details.rate,message_stats.ack_details.rate"
)


@dataclass(frozen=True)
class Figures:
    """Counts an app adds to the health page and /metrics, one per value of a label: orders per status."""

    name: str  # its key in the health JSON and, after `orderpipe_`, its metric's name
    label: str  # the metric's label, whose values are the keys `read` returns
    description: str  # the health page's caption and the metric's help
    read: Callable[[], dict[str, int]]  # as cheap on tables of millions of rows as the rest (see bounded_count)


_figures: dict[str, Figures] = {}


def register_figures(figures: Figures) -> None:
    """Show an app's figures on the health page and in /metrics; an app calls this from its AppConfig.ready."""
    _figures[figures.name] = figures


def registered_figures() -> list[Figures]:
    """The figures apps registered, in the order they did."""
    return list(_figures.values())


@dataclass(frozen=True)
class QueueHealth:
    """One queue as the management API reports it; the figures are None when it does not know the queue."""

    name: str
    messages: int | None = None
    messages_ready: int | None = None
    messages_unacknowledged: int | None = None
    consumers: int | None = None
    publish_rate: float | None = None  # messages per second, averaged by RabbitMQ over its last sample
    deliver_rate: float | None = None
    ack_rate: float | None = None


@dataclass(frozen=True)
class OutboxHealth:
    pending: int
    lag_seconds: float  # age of the oldest unsent row; 0 when nothing waits
    last_sent_at: datetime | None


@dataclass(frozen=True)
class DeadLetterHealth:
    total: int
    unreplayed: int


@dataclass(frozen=True)
class RedisHealth:
    up: bool
    error: str | None  # why Redis did not answer a PING


@dataclass(frozen=True)
class PipelineHealth:
    checked_at: datetime
    queues: list[QueueHealth]
    error: str | None  # why the queue figures are missing: the management API could not be read
    redis: RedisHealth
    outbox: OutboxHealth
    dead_letters: DeadLetterHealth
    figures: dict[str, dict[str, int]]  # by Figures.name: what the apps registered
    last_event_recorded_at: datetime | None  # newest outbox row
    last_event_handled_at: datetime | None  # newest inbox row


def pipeline_health() -> PipelineHealth:
    """Collect every figure of the health page; never raises because RabbitMQ is unreachable.

    Every query reads an index and stops early, so the page stays cheap on tables of millions of rows.
    """
    now = timezone.now()
    queues, error = _queues()
    return PipelineHealth(
        checked_at=now,
        queues=queues,
        error=error,
        redis=redis_health(),
        outbox=outbox_health(now=now),
        dead_letters=DeadLetterHealth(
            total=bounded_count(DeadLetter.objects.all()),
            unreplayed=DeadLetter.objects.filter(replayed_at__isnull=True).count(),  # its partial index
        ),
        figures={figures.name: figures.read() for figures in registered_figures()},
        last_event_recorded_at=OutboxMessage.objects.order_by("-pk").values_list("created_at", flat=True).first(),
        last_event_handled_at=InboxMessage.objects.order_by("-pk").values_list("processed_at", flat=True).first(),
    )


def outbox_health(*, now: datetime) -> OutboxHealth:
    """Rows waiting for the relay and their lag (the partial index of unsent rows), and the last send."""
    pending = OutboxMessage.objects.filter(sent_at__isnull=True)
    oldest = pending.order_by("pk").values_list("created_at", flat=True).first()
    sent = OutboxMessage.objects.filter(sent_at__isnull=False).order_by("-sent_at")
    return OutboxHealth(
        pending=pending.count(),
        lag_seconds=max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
        last_sent_at=sent.values_list("sent_at", flat=True).first(),
    )


def bounded_count(queryset: QuerySet, *, ordered_by: str = "pk") -> int:
    """Exact up to COUNT_CAP rows, read in the order of an index (`ordered_by`) so the scan stops there;
    beyond, an estimate: PostgreSQL's planner's, as fresh as the table's statistics (other databases count).
    """
    capped = queryset.order_by(ordered_by)[: COUNT_CAP + 1].count()
    if capped <= COUNT_CAP:
        return capped
    if connections[queryset.db].vendor != "postgresql":
        return queryset.count()
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        estimate = int(cursor.fetchone()[0][0]["Plan"]["Plan Rows"])
    return max(estimate, capped)


def redis_health() -> RedisHealth:
    """PING Redis (the availability cache and the relay's wake-ups) once, never waiting long for it."""
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=REDIS_PING_TIMEOUT,
        socket_timeout=REDIS_PING_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except redis.RedisError as error:
        return RedisHealth(up=False, error=f"Redis: {error}")
    finally:
        client.close()
    return RedisHealth(up=True, error=None)


def system_queues() -> list[str]:
    """Every queue the topology declares: event queues, task queues, their dead-letter queues, unrouted."""
    names = [s.queue for s in subscribers()] + [q.name for q in current_app.amqp.queues.values()]
    return [*(n for name in names for n in (name, dead_letter_queue(name).name)), UNROUTED_QUEUE.name]


def _queues() -> tuple[list[QueueHealth], str | None]:
    names = system_queues()
    try:
        reported = {q["name"]: q for q in _management_queues()}
    except (requests.RequestException, ValueError, KeyError, TypeError) as error:
        return [QueueHealth(name) for name in names], f"RabbitMQ management API: {error}"
    return [_queue_health(name, reported.get(name)) for name in names], None


def _management_queues() -> list[dict[str, Any]]:
    # The vhost and credentials of the broker this process really uses: tests move it to a vhost
    # of their own through the Celery app, which Django's settings do not see.
    parts = urlsplit(current_app.conf.broker_url.split(";", 1)[0])  # the first node of a failover list
    vhost = unquote(parts.path[1:]) or "/"
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    url = f"{settings.RABBITMQ_MANAGEMENT_URL.rstrip('/')}/api/queues/{quote(vhost, safe='')}"
    response = requests.get(url, params={"columns": QUEUE_COLUMNS}, auth=auth, timeout=MANAGEMENT_TIMEOUT)
    response.raise_for_status()
    return response.json()


def _queue_health(name: str, reported: dict[str, Any] | None) -> QueueHealth:
    if reported is None:  # not declared (yet) on this vhost
        return QueueHealth(name)
    stats = reported.get("message_stats", {})

    def rate(key: str) -> float:
        return float(stats.get(f"{key}_details", {}).get("rate", 0.0))

    return QueueHealth(
        name=name,
        messages=reported.get("messages", 0),
        messages_ready=reported.get("messages_ready", 0),
        messages_unacknowledged=reported.get("messages_unacknowledged", 0),
        consumers=reported.get("consumers", 0),
        publish_rate=rate("publish"),
        deliver_rate=rate("deliver_get"),
        ack_rate=rate("ack"),
    )
