"""Running handlers on events: inbox for exactly-once effects, retries for transient errors.

The handler's effect, the events it publishes and its inbox row commit in one transaction, so a
duplicate delivery finds the inbox row and does nothing. Each handler is a Celery task of its own,
`<service>.<function>`, which handles one event; events that were waiting together go to one
`<service>.handle_batch` task instead (eventbus.intake forms them). A batch is first tried in one
transaction as a whole; should any handler raise, that is rolled back and the batch runs again with
each (handler, event) in a savepoint of its own: one that fails takes back only its own work and is
retried alone, as its handler's task. A task that did not succeed leaves its process to reconnect to
the database, so a worker outlives a database outage by itself.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import random
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kombu.exceptions
import redis
from celery import Task, shared_task, states
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
from django.utils import timezone
from pydantic import ValidationError

from eventbus import deadletters, metrics, tracing
from eventbus.authenticity import ForgedMessage, check_task_sender
from eventbus.contracts import UnknownEventType
from eventbus.envelope import CloudEvent, PoisonMessage, from_dict
from eventbus.errors import EventExpired, PermanentError, TransientError
from eventbus.models import DeadLetter, InboxMessage
from eventbus.names import batch_task_name
from eventbus.outbox import HopLimitExceeded, current_event, written_together
from eventbus.preload import preloaded
from eventbus.receipts import delivered_before, receipt_headers, received_at, received_times
from eventbus.retention import event_expired
from eventbus.subscriptions import Handler, Subscriber, subscribers
from eventbus.transactions import handler_transaction

logger = logging.getLogger(__name__)

# Which try at its event the running handler is on; see delivery_attempt().
_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("delivery_attempt", default=1)


# A programming error (KeyError, say) is not among them: it is retried, with its traceback logged.
PERMANENT = (PermanentError, PoisonMessage, ValidationError, HopLimitExceeded, UnknownEventType)
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


@metrics.observe_handler_runs
def run_handler(task: HandlerTask, handler: Handler, raw_event: dict[str, Any]) -> dict[str, Any]:
    """Apply `handler` to the event once. The result (kept by the result backend) says what happened,
    `done` or `duplicate`, and on which attempt, so retries are visible in Flower and the admin."""
    attempt = task.request.retries
    try:
        if not task.request.called_directly:  # delivered by the broker, not called in-process
            check_task_sender(handler.service, task.request.properties)
        event = from_dict(raw_event)
        _refuse_expired(handler, event)
        delivered = received_at(received_times(task.request), event.id)
        outcome = apply_once(handler, event, task.request.id or "", attempt=attempt + 1, delivered_at=delivered)
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
        _log_retry(handler, error, attempt + 1, delay)
        try:
            raise task.retry(exc=error, countdown=delay, max_retries=None) from error
        except Reject as unsent:
            # Celery rejects the message for good when the broker refuses the retry (a node restarting, say), and
            # RabbitMQ would dead-letter the event for an outage of its own. It goes back to its queue to run again
            # on this attempt instead; the queue's delivery limit bounds how often.
            logger.warning("%s: could not send the retry (%s); the event goes back to its queue", handler.name, unsent)
            time.sleep(1)  # no hot redelivery loop
            raise Reject(unsent.reason, requeue=True) from error


def run_batch(task: HandlerTask, subscriber: Subscriber, raw_events: list[dict[str, Any]]) -> dict[str, Any]:
    """Handle events of `subscriber` that were waiting together, in one transaction: each (handler, event)
    in a savepoint of its own, with its own inbox row. A handler that fails takes back only its own work:
    when retrying may help, it goes on alone as its handler's own task (attempt 2); when it cannot, its
    event goes to the dead-letter store. Should the transaction as a whole fail (the database away), every
    event goes on alone. The result lists each event and what each handler did with it."""
    if not task.request.called_directly:
        try:
            check_task_sender(subscriber.service, task.request.properties)
        except ForgedMessage as error:
            for raw in raw_events:
                again = delivered_before(task.request, str(raw.get("id", "")))
                reason = DeadLetter.Reason.FORGED
                _store_dead_letter(subscriber.batch_task, subscriber.task_queue, raw, error, reason, redelivered=again)
            raise
    task_id, received = task.request.id or "", received_times(task.request)
    retries: list[tuple[Handler, dict[str, Any]]] = []
    try:
        handled = _without_savepoints(subscriber, raw_events, task_id, received)
        if handled is None:

            def apply(handler: Handler, event: CloudEvent, raw: dict[str, Any]) -> str:
                delivered, again = received_at(received, event.id), delivered_before(task.request, event.id)
                return _batch_apply(handler, event, raw, task_id, delivered, retries, redelivered=again)

            with transaction.atomic():
                _take_service_lock(subscriber.service)
                handled = [_batch_event(subscriber, raw, apply) for raw in raw_events]
    except Exception as error:
        logger.warning("%s: %s; its %d events go on one by one", subscriber.batch_task, error, len(raw_events))
        pairs = [(h, raw) for raw in raw_events for h in subscriber.handlers_for(str(raw.get("type", "")))]
        _send_alone(task, pairs, retries=0)
        return {"split": f"{type(error).__name__}: {error}", "events": len(raw_events)}
    _send_alone(task, retries, retries=1)
    return {"events": handled}


class _NeedsSavepoints(Exception):
    """A handler of a batch tried whole raised: the batch runs again with a savepoint per (handler, event)."""


@dataclass
class WholeBatch:
    """A batch being tried whole (_without_savepoints): the (handler, event id) pairs its inbox holds already or it
    has handled, and the inbox rows of those it handles, written together once every handler ran."""

    handled: set[tuple[str, str]]
    inbox: list[InboxMessage] = field(default_factory=list)

    def claim(self, handler: str, event_id: str) -> bool:
        """Whether `handler` is yet to handle the event; from now on it has."""
        if (handler, event_id) in self.handled:
            return False
        self.handled.add((handler, event_id))
        return True


def _without_savepoints(
    subscriber: Subscriber, raw_events: list[dict[str, Any]], task_id: str, received: dict[str, float]
) -> list[dict[str, Any]] | None:
    """Handle the batch in one transaction, without a savepoint per (handler, event), with one INSERT for its inbox
    rows and one for the events its handlers publish, and one SELECT per kind of row its handlers lock
    (eventbus.preload): almost every batch succeeds whole. Should any handler
    raise, the transaction is rolled back and None returned: the caller runs the batch again with savepoints.
    Its handler runs are counted only once it commits."""
    # Read before the transaction: on SQLite every writer waits while one is open. A duplicate that commits between
    # the read and the batch's commit fails the batch's inbox INSERT, and the batch runs again with savepoints.
    handled_before = _handled_among(subscriber, raw_events)
    try:
        with metrics.handler_runs_held() as held, transaction.atomic():
            _take_service_lock(subscriber.service)
            whole = WholeBatch(handled_before)

            def apply(handler: Handler, event: CloudEvent, raw: dict[str, Any]) -> str:
                return _batch_apply_whole(handler, event, task_id, received_at(received, event.id), whole)

            with preloaded(subscriber.preload, raw_events), written_together():
                handled = [_batch_event(subscriber, raw, apply) for raw in raw_events]
            try:
                InboxMessage.objects.bulk_create(whole.inbox)
            except IntegrityError as error:  # a duplicate running beside committed first
                raise _NeedsSavepoints(f"an inbox row of the batch exists now ({error})") from error
    except _NeedsSavepoints as error:
        logger.info("%s: %s; the batch runs again, each event in a savepoint", subscriber.batch_task, error)
        return None
    held.observe()
    return handled


def _handled_among(subscriber: Subscriber, raw_events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The (handler, event id) pairs of the batch its service's inbox holds (one query, by the inbox's unique key)."""
    names, ids = set(), set()
    for raw in raw_events:
        try:
            ids.add(str(uuid.UUID(str(raw.get("id")))))
        except ValueError:
            continue  # poison: _batch_event files it
        names.update(handler.name for handler in subscriber.handlers_for(str(raw.get("type", ""))))
    rows = InboxMessage.objects.filter(handler__in=names, event_id__in=ids).values_list("handler", "event_id")
    return {(handler, str(event_id)) for handler, event_id in rows}


def _batch_event(
    subscriber: Subscriber, raw: dict[str, Any], apply: Callable[[Handler, CloudEvent, dict[str, Any]], str]
) -> dict[str, Any]:
    """One event of a batch, given to each of its handlers by `apply`; what each did with it."""
    try:
        event = from_dict(raw)
    except PoisonMessage as error:  # the intake checked it: a batch written by hand
        _store_dead_letter(subscriber.batch_task, subscriber.task_queue, raw, error, DeadLetter.Reason.POISON)
        return {"id": str(raw.get("id", "")), "poison": str(error)}
    outcomes = {handler.name: apply(handler, event, raw) for handler in subscriber.handlers_for(event.type)}
    return {"id": event.id, "type": event.type, "handlers": outcomes}


@metrics.observe_handler_runs
def _batch_apply_whole(
    handler: Handler, event: CloudEvent, task_id: str, delivered: datetime | None, whole: WholeBatch
) -> str:
    try:
        _refuse_expired(handler, event)
        return apply_once(handler, event, task_id, delivered_at=delivered, batch=whole)
    except DATABASE_UNAVAILABLE as error:
        if not _lost_a_lock_race(error):
            raise  # not this event's fault: the whole batch goes on one by one
        raise _NeedsSavepoints(f"{handler.name} lost a lock race at {event.type} {event.id}") from error
    except Exception as error:
        raise _NeedsSavepoints(f"{handler.name} raised {type(error).__name__} at {event.type} {event.id}") from error


@metrics.observe_handler_runs
def _batch_apply(
    handler: Handler,
    event: CloudEvent,
    raw: dict[str, Any],
    task_id: str,
    delivered: datetime | None,
    retries: list[tuple[Handler, dict[str, Any]]],
    *,
    redelivered: bool,
) -> str:
    try:
        _refuse_expired(handler, event)
        return apply_once(handler, event, task_id, delivered_at=delivered)  # a savepoint in the batch's transaction
    except DATABASE_UNAVAILABLE as error:
        if not _lost_a_lock_race(error):
            raise  # not this event's fault: the whole batch goes on one by one
        # Batches running side by side lock rows in no common order; the database chose this event's
        # savepoint to give way (its locks went with it). It goes on alone.
        _log_retry(handler, error, 1, None)
        retries.append((handler, raw))
        return "retrying"
    except EventExpired as error:
        _store_dead_letter(
            handler.name, handler.task_queue, raw, error, DeadLetter.Reason.EXPIRED, redelivered=redelivered
        )
    except PERMANENT as error:
        _store_dead_letter(
            handler.name, handler.task_queue, raw, error, DeadLetter.Reason.PERMANENT, redelivered=redelivered
        )
    except Exception as error:
        _log_retry(handler, error, 1, None)
        retries.append((handler, raw))
        return "retrying"
    return "dead-lettered"


def _send_alone(task: HandlerTask, pairs: list[tuple[Handler, dict[str, Any]]], *, retries: int) -> None:
    """Send each (handler, event) as that handler's own task, after `retries` tries, with backoff. Should the
    broker refuse, the batch goes back to its queue to run again: what it committed, its inbox absorbs."""
    received = received_times(task.request)
    try:
        for handler, raw in pairs:
            event_id = str(raw.get("id", ""))
            receipt = {event_id: received[event_id]} if event_id in received else {}
            again = delivered_before(task.request, event_id)
            send_handler_task(
                task.app, handler, raw, received=receipt, redelivered=again, retries=retries, countdown=backoff(retries)
            )
    except Exception as error:
        logger.exception("could not send the events of a batch on one by one; the batch runs again")
        time.sleep(1)  # no hot redelivery loop; the task queue's delivery limit bounds it too
        raise Reject(error, requeue=True) from error


def send_handler_task(
    app: Any,
    handler: Handler,
    raw_event: dict[str, Any],
    *,
    received: dict[str, float] | None = None,
    redelivered: bool = False,
    **options: Any,
) -> None:
    """Send `raw_event` to `handler`'s own task, with the task id derived from both, on its service's queue;
    `received`: when the intake received it; `redelivered`: whether the broker had delivered it before
    (eventbus.receipts)."""
    event_id = str(raw_event.get("id", ""))
    app.send_task(
        handler.name,
        args=[raw_event],
        task_id=handler.task_id(event_id),
        queue=handler.task_queue,
        routing_key=handler.task_queue,
        exchange=handler.task_queue,
        argsrepr=events_repr([raw_event]),
        headers=receipt_headers(received, redelivered=[event_id] if redelivered else ()),
        **options,
    )


def events_repr(raw_events: list[dict[str, Any]]) -> str:
    """A task's arguments as Flower and the result backend show them: each event's type and id, not its whole
    body (Celery would otherwise format a shortened repr of every body, at some cost per task)."""
    return "[" + ", ".join(f"{raw.get('type')} {raw.get('id')}" for raw in raw_events) + "]"


def apply_once(
    handler: Handler,
    event: CloudEvent,
    task_id: str = "",
    *,
    attempt: int = 1,
    delivered_at: datetime | None = None,
    batch: WholeBatch | None = None,
) -> str:
    """Apply `handler` to `event` unless it already was: `done`, or `duplicate` when its inbox row exists.
    The handler's effect, the events it publishes and the inbox row commit together (inside a caller's
    transaction, as a savepoint). In a batch tried whole (`batch`), as part of the batch's transaction, which
    any error spoils: the batch writes the inbox row with its others, and knows the pairs handled already.
    What a worker runs, without the broker: tests call it to deliver by hand."""
    data = event.payload(handler.contract)
    if batch is not None and not batch.claim(handler.name, event.id):
        logger.info("%s: %s %s already handled, skipping duplicate", handler.name, event.type, event.id)
        return "duplicate"
    token, attempt_token = current_event.set(event), _attempt.set(attempt)
    try:
        with tracing.handler_span(handler.name, event), handler_transaction(savepoint=batch is None):
            if len(transaction.get_connection().atomic_blocks) == 1:  # a task of its own, not part of a batch
                _take_service_lock(handler.service, alone=True)
            row = InboxMessage(
                handler=handler.name,
                event_id=event.id,
                event_type=event.type,
                correlation_id=event.correlationid,
                task_id=task_id,
                delivered_at=delivered_at,
                processed_at=timezone.now(),
            )
            if batch is None:
                # Inserted first: a concurrent duplicate waits on this row's unique key, then fails.
                row.save(force_insert=True)
            else:
                # Written with the batch's others. A duplicate running beside still fails on the key then, and
                # the transaction takes back this handler's effect with it.
                batch.inbox.append(row)
            handler.function(data, event)
    except IntegrityError:
        if batch is None and _handled(handler, event):
            logger.info("%s: %s %s already handled, skipping duplicate", handler.name, event.type, event.id)
            return "duplicate"
        raise
    finally:
        current_event.reset(token)
        _attempt.reset(attempt_token)
    return "done"


def _take_service_lock(service: str, *, alone: bool = False) -> None:
    """On PostgreSQL, wait until no batch of `service` is open and, for a batch (not `alone`), no handler task of
    its own either (a retry, an event that came alone). A batch locks the rows of many events (an order's products,
    say) in no common order with anyone else's, and holds them until it commits: side by side with another batch or
    a task it deadlocks, each time costing a second (measured: 207 deadlocks in 1000 orders between batches, 6
    orders/s), and an event that loses every try is dead-lettered. So a batch takes its service's advisory lock
    alone, and a task of its own shares it with the others: they run side by side, as an idle pipeline needs for
    its latency, each moving one event's rows (an order's products in one statement). SQLite's writers always
    take turns."""
    database = transaction.get_connection()
    if database.vendor == "postgresql":
        digest = hashlib.blake2b(batch_task_name(service).encode(), digest_size=8).digest()
        take = "pg_advisory_xact_lock_shared" if alone else "pg_advisory_xact_lock"
        with database.cursor() as cursor:
            cursor.execute(f"SELECT {take}(%s)", [int.from_bytes(digest, "big", signed=True)])


def _lost_a_lock_race(error: BaseException) -> bool:
    """A deadlock, serialization failure or lock timeout: the transaction is still usable once its savepoint
    is rolled back (PostgreSQL's SQLSTATE; SQLite locks the whole database and has none of these)."""
    return getattr(error.__cause__, "sqlstate", None) in {"40P01", "40001", "55P03"}


def _refuse_expired(handler: Handler, event: CloudEvent) -> None:
    if event_expired(event.time) and not _handled(handler, event):
        # Retention may have deleted the inbox row of an earlier handling (see eventbus.retention).
        raise EventExpired(f"{event.type} {event.id} of {event.time} is older than the inbox window allows")


def _handled(handler: Handler, event: CloudEvent) -> bool:
    return InboxMessage.objects.filter(handler=handler.name, event_id=event.id).exists()


def _log_retry(handler: Handler, error: BaseException, attempt: int, delay: int | None) -> None:
    # An unexpected error is retried too, within the same attempt budget, but logged with its traceback.
    log = logger.warning if isinstance(error, TRANSIENT) else logger.exception
    log("%s: %s on attempt %d, retrying%s", handler.name, error, attempt, f" in {delay}s" if delay else "")


def _store_dead_letter(
    handler: str,
    queue: str,
    raw_event: Any,
    error: BaseException,
    reason: str,
    attempts: int = 1,
    *,
    redelivered: bool = False,
) -> None:
    """File `raw_event` as `handler`'s dead letter; `redelivered`: its handling may have run, and filed it, before
    (eventbus.receipts.delivered_before), so a letter of the same handler and event on file is taken for it."""
    deadletters.store(
        reason=reason,
        queue=queue,
        handler=handler,
        body=raw_event if isinstance(raw_event, dict) else str(raw_event),
        error=f"{type(error).__name__}: {error}",
        traceback="".join(traceback.format_exception(error)),
        attempts=attempts,
        redelivered=redelivered,
    )


def _dead_letter(
    task: HandlerTask, handler: Handler, raw_event: dict[str, Any], error: BaseException, reason: str, attempts: int
) -> None:
    again = delivered_before(task.request, str(raw_event.get("id", "")))
    try:
        _store_dead_letter(handler.name, handler.task_queue, raw_event, error, reason, attempts, redelivered=again)
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


# Task names already registered with Celery (register_tasks may run again for a subscriber added later).
_registered: set[str] = set()


def register_tasks() -> None:
    """Make a Celery task of every handler (`<service>.<function>`) and of every subscriber's batch
    (`<service>.handle_batch`). Run when the apps are ready; again for a subscriber declared later."""
    for subscriber in subscribers():
        if subscriber.batch_task not in _registered:
            _register(subscriber.batch_task, run_batch, subscriber, run_batch.__doc__)
        for handler in subscriber.handlers:
            if handler.name not in _registered:
                _register(handler.name, run_handler, handler, handler.function.__doc__)


def _register(name: str, runner: Any, target: Subscriber | Handler, doc: str | None) -> None:
    def task(self: HandlerTask, payload: Any) -> dict[str, Any]:
        return runner(self, target, payload)

    task.__name__ = name.rsplit(".", 1)[1]
    task.__doc__ = doc
    shared_task(name=name, bind=True, base=HandlerTask)(task)
    _registered.add(name)


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
