"""Running one handler on one event: inbox for exactly-once effects, retries for transient errors.

The handler's effect, the events it publishes and its inbox row commit in one transaction, so a
duplicate delivery finds the inbox row and does nothing. A task that did not succeed leaves its
process to reconnect to the database, so a worker outlives a database outage by itself.
"""

from __future__ import annotations

import contextvars
import logging
import random
import traceback
from typing import Any

import kombu.exceptions
import redis
from celery import Task, states
from celery.exceptions import Reject
from celery.signals import task_internal_error, task_postrun, task_prerun
from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    connections,
    transaction,
)
from pydantic import ValidationError

from eventbus import deadletters
from eventbus.authenticity import ForgedMessage, check_task_sender
from eventbus.envelope import CloudEvent, PoisonMessage, from_dict
from eventbus.models import DeadLetter, InboxMessage
from eventbus.outbox import HopLimitExceeded, current_event
from eventbus.retention import event_expired
from eventbus.subscriptions import Handler

logger = logging.getLogger(__name__)

# Which try at its event the running handler is on; see delivery_attempt().
_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("delivery_attempt", default=1)


class TransientError(Exception):
    """Raised by a handler for a failure that may pass: a gateway timeout, a service briefly down."""


class PermanentError(Exception):
    """Raised by a handler for a failure that retrying cannot fix."""


class EventExpired(PermanentError):
    """An event older than the inbox window allows: a duplicate of it could no longer be recognised."""


PERMANENT = (PermanentError, PoisonMessage, ValidationError, HopLimitExceeded, LookupError)
# The database is away, restarting or refusing writes (PostgreSQL's read-only mode is an InternalError).
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, InternalError)
TRANSIENT = (
    TransientError,
    *DATABASE_UNAVAILABLE,
    kombu.exceptions.OperationalError,
    redis.ConnectionError,
    TimeoutError,
)


class HandlerTask(Task):
    """Base of every event handler task: late acks, requeue when the worker dies, no eager shortcuts."""

    acks_late = True
    reject_on_worker_lost = True
    # Retries are decided in run_handler, with backoff and jitter; never resend automatically.
    autoretry_for = ()
    max_retries = None


def delivery_attempt() -> int:
    """The attempt of the handler running now at its event: 1 on the first delivery, 2 on the first
    retry, and so on (1 outside a handler). It travels in the task message, so it needs no store."""
    return _attempt.get()


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
        if not task.request.called_directly:  # delivered by the broker, not called in-process
            check_task_sender(handler.service, task.request.properties)
        event = from_dict(raw_event)
        if event_expired(event.time) and not _handled(handler, event):
            # Retention may have deleted the inbox row of an earlier handling (see eventbus.retention).
            raise EventExpired(f"{event.type} {event.id} of {event.time} is older than the inbox window allows")
        outcome = _apply_once(handler, event, task.request.id or "", attempt=attempt + 1)
        return {"outcome": outcome, "attempt": attempt + 1}
    except ForgedMessage as error:
        _dead_letter(task, handler, raw_event, error, DeadLetter.Reason.FORGED, attempt + 1)
        raise
    except EventExpired as error:
        _dead_letter(task, handler, raw_event, error, DeadLetter.Reason.EXPIRED, attempt + 1)
        raise
    except PERMANENT as error:
        _dead_letter(task, handler, raw_event, error, DeadLetter.Reason.PERMANENT, attempt + 1)
        raise
    except Exception as error:
        if attempt + 1 >= settings.EVENTBUS_MAX_ATTEMPTS:
            _dead_letter(task, handler, raw_event, error, DeadLetter.Reason.EXHAUSTED, attempt + 1)
            raise
        delay = backoff(attempt)
        # An unexpected error is treated as possibly transient too, within the same attempt budget,
        # but logged with its traceback.
        log = logger.warning if isinstance(error, TRANSIENT) else logger.exception
        log("%s: %s on attempt %d, retrying in %ds", handler.name, error, attempt + 1, delay)
        raise task.retry(exc=error, countdown=delay, max_retries=None) from error


def _apply_once(handler: Handler, event: CloudEvent, task_id: str, *, attempt: int = 1) -> str:
    data = event.payload(handler.contract)
    token, attempt_token = current_event.set(event), _attempt.set(attempt)
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
        _attempt.reset(attempt_token)
    return "done"


def _handled(handler: Handler, event: CloudEvent) -> bool:
    return InboxMessage.objects.filter(handler=handler.name, event_id=event.id).exists()


def _dead_letter(
    task: HandlerTask, handler: Handler, raw_event: dict[str, Any], error: BaseException, reason: str, attempts: int
) -> None:
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
    except DATABASE_UNAVAILABLE as db_error:
        # Not the event's fault: the handler runs again later, and once the database is back it
        # succeeds or its dead letter is stored. (A rejection would not do: Celery's main process
        # records the task's failure before it rejects the message, and with the database away that
        # raises, leaving the message unacknowledged until the worker restarts; a worker with its
        # prefetch window full of such messages takes no more work.)
        delay = backoff(attempts - 1)
        logger.warning(
            "%s: cannot store the dead letter (%s); trying the event again in %ds", handler.name, db_error, delay
        )
        raise task.retry(exc=error, countdown=delay, max_retries=None) from db_error
    except DatabaseError as db_error:
        # The database is up but refuses this row: rejected without requeue, the broker dead-letters
        # the message to `<queue>.dlq`, and the intake files what it can of it.
        logger.exception("%s: could not store the dead letter; handing it to the broker", handler.name)
        raise Reject(db_error, requeue=False) from db_error


def reconnect_database() -> None:
    """Close this process's database connections (those outside a transaction): the next query opens
    a fresh one. After a database error a connection may be dead (the server restarted) or, on SQLite,
    read-only for good (the file was opened while it could not be written). Django's own check runs
    per web request, and Celery skips it between tasks when connections are reused (CELERY_DB_REUSE_MAX)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


# Set when a task of this process did not succeed: the next one starts on fresh connections.
_reconnect_pending = False


@task_postrun.connect
def _reconnect_after_failure(state: str | None = None, **_: Any) -> None:
    # Only after a task that did not succeed: reconnecting costs a round trip that successes need not pay.
    global _reconnect_pending
    if state != states.SUCCESS:
        _reconnect_pending = True


@task_internal_error.connect
def _reconnect_after_internal_error(**_: Any) -> None:
    # Raised outside the task body, such as the result backend failing to store the outcome.
    global _reconnect_pending
    _reconnect_pending = True


@task_prerun.connect
def _reconnect_before_task(**_: Any) -> None:
    # Before the next task rather than right after the failure: Celery still records the failure
    # after the task, which may open a connection while the database is refusing writes.
    global _reconnect_pending
    if _reconnect_pending:
        _reconnect_pending = False
        reconnect_database()
