"""Running one handler on one event: inbox for exactly-once effects, retries for transient errors.

The handler's effect, the events it publishes and its inbox row commit in one transaction, so a
duplicate delivery finds the inbox row and does nothing.
"""

from __future__ import annotations

import logging
import random
import traceback
from typing import Any

import kombu.exceptions
import redis
from celery import Task
from celery.exceptions import Reject
from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, transaction
from pydantic import ValidationError

from eventbus import deadletters
from eventbus.envelope import CloudEvent, PoisonMessage, from_dict
from eventbus.models import DeadLetter, InboxMessage
from eventbus.outbox import HopLimitExceeded, current_event
from eventbus.retention import event_expired
from eventbus.subscriptions import Handler

logger = logging.getLogger(__name__)


class TransientError(Exception):
    """Raised by a handler for a failure that may pass: a gateway timeout, a service briefly down."""


class PermanentError(Exception):
    """Raised by a handler for a failure that retrying cannot fix."""


class EventExpired(PermanentError):
    """An event older than the inbox window allows: a duplicate of it could no longer be recognised."""


PERMANENT = (PermanentError, PoisonMessage, ValidationError, HopLimitExceeded, LookupError)
TRANSIENT = (TransientError, OperationalError, kombu.exceptions.OperationalError, redis.ConnectionError, TimeoutError)


class HandlerTask(Task):
    """Base of every event handler task: late acks, requeue when the worker dies, no eager shortcuts."""

    acks_late = True
    reject_on_worker_lost = True
    # Retries are decided in run_handler, with backoff and jitter; never resend automatically.
    autoretry_for = ()
    max_retries = None


def backoff(attempt: int) -> int:
    """Exponential backoff with jitter, capped: attempt 0 waits up to base, then 2x, 4x, ... In whole
    seconds, at least one: RabbitMQ's native delayed delivery, which holds the retry, counts seconds."""
    ceiling = min(settings.EVENTBUS_RETRY_MAX_DELAY, settings.EVENTBUS_RETRY_BASE_DELAY * (2**attempt))
    return max(1, round(random.uniform(ceiling / 2, ceiling)))  # noqa: S311 (jitter, not cryptography)


def run_handler(task: HandlerTask, handler: Handler, raw_event: dict[str, Any]) -> dict[str, Any]:
    """Apply `handler` to the event once. The result (kept by the result backend) says what happened,
    `done` or `duplicate`, and on which attempt, so retries are visible in Flower and the admin."""
    attempt = task.request.retries
    try:
        event = from_dict(raw_event)
        if event_expired(event.time) and not _handled(handler, event):
            # Retention may have deleted the inbox row of an earlier handling (see eventbus.retention).
            raise EventExpired(f"{event.type} {event.id} of {event.time} is older than the inbox window allows")
        return {"outcome": _apply_once(handler, event, task.request.id or ""), "attempt": attempt + 1}
    except EventExpired as error:
        _dead_letter(handler, raw_event, error, DeadLetter.Reason.EXPIRED, attempt + 1)
        raise
    except PERMANENT as error:
        _dead_letter(handler, raw_event, error, DeadLetter.Reason.PERMANENT, attempt + 1)
        raise
    except Exception as error:
        if attempt + 1 >= settings.EVENTBUS_MAX_ATTEMPTS:
            _dead_letter(handler, raw_event, error, DeadLetter.Reason.EXHAUSTED, attempt + 1)
            raise
        delay = backoff(attempt)
        # An unexpected error is treated as possibly transient too, within the same attempt budget,
        # but logged with its traceback.
        log = logger.warning if isinstance(error, TRANSIENT) else logger.exception
        log("%s: %s on attempt %d, retrying in %ds", handler.name, error, attempt + 1, delay)
        raise task.retry(exc=error, countdown=delay, max_retries=None) from error


def _apply_once(handler: Handler, event: CloudEvent, task_id: str) -> str:
    data = event.payload(handler.contract)
    token = current_event.set(event)
    try:
        with transaction.atomic():
            # Inserted first: a concurrent duplicate waits on this row's unique key, then fails.
            InboxMessage.objects.create(
                handler=handler.name,
                event_id=event.id,
                event_type=event.type,
                correlation_id=event.correlationid,
                task_id=task_id,
            )
            handler.function(data, event)
    except IntegrityError:
        if InboxMessage.objects.filter(handler=handler.name, event_id=event.id).exists():
            logger.info("%s: %s %s already handled, skipping duplicate", handler.name, event.type, event.id)
            return "duplicate"
        raise
    finally:
        current_event.reset(token)
    return "done"


def _handled(handler: Handler, event: CloudEvent) -> bool:
    return InboxMessage.objects.filter(handler=handler.name, event_id=event.id).exists()


def _dead_letter(handler: Handler, raw_event: dict[str, Any], error: BaseException, reason: str, attempts: int) -> None:
    try:
        deadletters.store(
            reason=reason,
            queue=f"{handler.service}.tasks",
            handler=handler.name,
            body=raw_event,
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(error)),
            attempts=attempts,
        )
    except DatabaseError as db_error:
        # Rejected without requeue, the broker dead-letters the message to `<queue>.dlq`, and the
        # intake files it into the store when the database is back.
        logger.exception("%s: could not store the dead letter; handing it to the broker", handler.name)
        raise Reject(db_error, requeue=False) from db_error
