"""The intake: a worker consumer step that turns each event on a service's queue into handler requests.

For every event on a service's event queue it checks the envelope, the data against the contract
and the publisher, then hands the event to this worker's pool (eventbus.handoff): an event that arrives
alone becomes one request per subscribed handler, with a task id derived from (handler, event); events
that arrive while the worker has a task in flight (EVENTBUS_INTAKE_TASKS_IN_FLIGHT), or while more are
being read, go together, up to EVENTBUS_BATCH_MAX, to one `<service>.handle_batch` request
(eventbus.handling.run_batch) once it is done. So an idle pipeline waits for nothing, and a busy one pays
Celery's cost per task once per batch. An event is acknowledged only when the requests made of it are done;
should the worker die first, the broker delivers it again. What can never be handled goes to the
dead-letter store at once; it is not retried. The same step files messages that RabbitMQ dead-lettered
(delivery limit, rejection) from the service's `.dlq` queues.
"""

from __future__ import annotations

import json
import logging
import select
import time
from dataclasses import dataclass, field
from typing import Any

from celery import bootsteps
from celery.utils import uuid
from celery.worker import state as worker_state
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from kombu import Consumer
from kombu.message import Message

from eventbus import deadletters, handoff, tracing
from eventbus.authenticity import event_forgery
from eventbus.envelope import CloudEvent, PoisonMessage, parse
from eventbus.handling import events_repr, reconnect_database
from eventbus.models import DeadLetter
from eventbus.receipts import receipt_headers
from eventbus.subscriptions import Handler, Subscriber, subscriber_for_task_queue
from eventbus.topology import dead_letter_queue, subscriber_queue

logger = logging.getLogger(__name__)
# How often waiting events are looked at while the pool is busy or the connection has more to read.
HAND_OVER_CHECK_SECONDS = 0.002


def consumed_subscribers(app) -> list[Subscriber]:
    """The services whose task queue this worker consumes (`-Q`): it takes in their events too."""
    selected = app.amqp.queues.consume_from or app.amqp.queues
    return [s for s in (subscriber_for_task_queue(name) for name in selected) if s is not None]


@dataclass(frozen=True)
class Waiting:
    """An event checked and ready for its handlers, not yet acknowledged."""

    event: CloudEvent
    handlers: list[Handler]
    message: Message
    received: float  # time.monotonic()
    received_at: float = field(default_factory=time.time)  # carried to the handler task (eventbus.receipts)


class EventIntake(bootsteps.ConsumerStep):
    """Consume the event queue (and dead-letter queues) of every service this worker serves."""

    # After the Tasks step: it fills the consumer's task strategies, which the hand-over starts requests with.
    # Started before it, the intake would take events (mingle reads the connection) it cannot yet hand over.
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app = parent.app
        self.worker_consumer = parent  # its event loop (hub) runs the hand-over once reading pauses
        self.waiting: dict[str, list[Waiting]] = {}
        self.socket = None
        self.late_hand_over = None

    def get_consumers(self, channel) -> list[Consumer]:
        subscribers = consumed_subscribers(self.app)
        consumers = []
        # A channel of their own: a prefetch count holds for the consumers that start on a channel after it is set,
        # and the event queues' window must not be the dead-letter queues' (it holds the events of running requests).
        dead_letter_channel = channel.connection.channel() if subscribers else None
        for subscriber in subscribers:
            consumers.append(
                Consumer(
                    channel,
                    queues=[subscriber_queue(subscriber)],
                    on_message=lambda message, s=subscriber: self.on_event(s, message),
                    prefetch_count=settings.EVENTBUS_INTAKE_PREFETCH,
                    no_ack=False,
                    auto_declare=False,  # broker_setup declared them; the service's user may only read them
                )
            )
            dlqs = [dead_letter_queue(subscriber.queue), dead_letter_queue(subscriber.task_queue)]
            consumers.append(
                Consumer(
                    dead_letter_channel,
                    queues=dlqs,
                    on_message=self.on_dead_letter,
                    prefetch_count=16,
                    auto_declare=False,
                )
            )
        if subscribers:
            logger.info("event intake consuming %s", ", ".join(s.queue for s in subscribers))
        self.socket = getattr(getattr(channel, "connection", None), "sock", None)
        return consumers

    def stop(self, parent) -> None:
        self._forget_waiting()
        super().stop(parent)

    def shutdown(self, parent) -> None:
        self._forget_waiting()
        super().shutdown(parent)

    def _forget_waiting(self) -> None:
        # The deliveries of waiting events die with their channel: the broker delivers them again.
        self.waiting.clear()
        if self.late_hand_over is not None:
            self.late_hand_over.cancel()
            self.late_hand_over = None

    def on_event(self, subscriber: Subscriber, message: Message) -> None:
        close_old_connections()
        try:
            event = parse(message.body, message.content_type)
            if event.hops > settings.EVENTBUS_MAX_HOPS:
                self._dead_letter(subscriber, message, DeadLetter.Reason.HOP_LIMIT, f"hops={event.hops}")
                return
        except PoisonMessage as error:
            self._dead_letter(subscriber, message, DeadLetter.Reason.POISON, str(error))
            return
        handlers = subscriber.handlers_for(event.type)
        try:
            # Checked once the event is known not to be poison. A replay is checked against the dead-letter
            # store: should the database be away, the event waits like one that could not be dispatched.
            if forged := event_forgery(message, event.type):
                self._dead_letter(subscriber, message, DeadLetter.Reason.FORGED, forged)
                return
        except Exception:
            logger.exception("could not check %s %s; it goes back to %s", event.type, event.id, subscriber.queue)
            self._requeue_later([message])
            return
        if not handlers:
            logger.warning("%s receives %s but has no handler for it", subscriber.queue, event.type)
            message.ack()
            return
        waiting = self.waiting.setdefault(subscriber.service, [])
        waiting.append(Waiting(event, handlers, message, time.monotonic()))
        if len(waiting) >= settings.EVENTBUS_BATCH_MAX:
            self.hand_over(subscriber)
        elif self._pool_busy() or self._more_to_read():
            # Every pool process has work (a task sent now would wait), or the broker already sent more,
            # likely events: they go together, as soon as a process is free or the frames are read.
            self._hand_over_later()
        else:
            self.hand_over(subscriber)

    def _hand_over_later(self) -> None:
        if self.late_hand_over is not None:
            return
        hub = getattr(self.worker_consumer, "hub", None)
        if hub is None:  # no event loop (a solo or threaded pool): nothing would fire the timer
            self.hand_over_all()
        else:
            self.late_hand_over = hub.call_later(HAND_OVER_CHECK_SECONDS, self._hand_over_late)

    def _hand_over_late(self) -> None:
        self.late_hand_over = None
        oldest = min((items[0].received for items in self.waiting.values() if items), default=None)
        waited = time.monotonic() - oldest if oldest is not None else 0.0
        if oldest is not None and self._pool_busy() and waited < settings.EVENTBUS_BATCH_WAIT_SECONDS:
            self._hand_over_later()
        else:
            self.hand_over_all()

    def _pool_busy(self) -> bool:
        """Whether this worker already holds as many tasks, running or next in line, as it lets be in flight:
        EVENTBUS_INTAKE_TASKS_IN_FLIGHT (0: one per pool process), never more than its pool processes."""
        processes = getattr(getattr(self.worker_consumer, "pool", None), "num_processes", None)
        limit = min(processes or 0, settings.EVENTBUS_INTAKE_TASKS_IN_FLIGHT or processes or 0)
        return bool(limit) and len(worker_state.reserved_requests) >= limit

    def _more_to_read(self) -> bool:
        """Whether the broker already sent more (a message is three frames; py-amqp reads no further ahead)."""
        try:
            return bool(self.socket is not None and select.select([self.socket], [], [], 0)[0])
        except (OSError, ValueError):  # closed under us: the connection's own error handling takes over
            return False

    def hand_over_all(self) -> None:
        for subscriber in consumed_subscribers(self.app):
            self.hand_over(subscriber)

    def hand_over(self, subscriber: Subscriber) -> None:
        """Make requests of this worker for the waiting events of `subscriber` (eventbus.handoff); each event's
        message is acknowledged once its requests are done. Should that fail, the events go back to the queue."""
        waiting = self.waiting.pop(subscriber.service, [])
        if not waiting:
            return
        delivery = handoff.Delivery(self.worker_consumer, [item.message for item in waiting])
        received = receipt_headers(
            {item.event.id: item.received_at for item in waiting},
            redelivered=[item.event.id for item in waiting if _redelivered(item.message)],
        )
        try:
            with tracing.dispatch_span([item.event for item in waiting], subscriber.queue):
                if len(waiting) == 1:
                    raw = waiting[0].event.to_dict()
                    for handler in waiting[0].handlers:
                        handoff.start_request(
                            self.worker_consumer, delivery, handler.name, [raw],
                            queue=handler.task_queue, task_id=handler.task_id(raw["id"]),
                            argsrepr=events_repr([raw]), headers=received,
                        )  # fmt: skip
                else:
                    raws = [item.event.to_dict() for item in waiting]
                    handoff.start_request(
                        self.worker_consumer, delivery, subscriber.batch_task, [raws],
                        queue=subscriber.task_queue, task_id=uuid(), argsrepr=events_repr(raws), headers=received,
                    )  # fmt: skip
        except Exception:
            logger.exception("could not hand over %d event(s); they go back to %s", len(waiting), subscriber.queue)
            time.sleep(1)  # as in _requeue_later: no hot redelivery loop
            delivery.give_back()

    def _dead_letter(self, subscriber: Subscriber, message: Message, reason: str, error: str) -> None:
        logger.warning("dead-lettering a message from %s: %s", subscriber.queue, error)
        letter = {
            "reason": reason,
            "queue": subscriber.queue,
            "body": message.body,
            "content_type": message.content_type or "",
            "headers": dict(message.headers or {}),
            "error": error,
            "redelivered": _redelivered(message),
        }
        try:
            deadletters.store(**letter)
        except DatabaseError:
            # Once more on a fresh connection: this one may be dead, or (SQLite) read-only for good because it
            # was opened while the file could not be written, though the database takes writes again.
            reconnect_database()
            try:
                deadletters.store(**letter)
            except DatabaseError:
                logger.exception("cannot store the dead letter; the broker's dead-letter queue takes it")
                reconnect_database()
                message.reject(requeue=False)
                return
        message.ack()

    def on_dead_letter(self, message: Message) -> None:
        """File a message RabbitMQ dead-lettered (delivery limit, or rejected) into the store."""
        close_old_connections()
        headers = dict(message.headers or {})
        death = (headers.get("x-death") or [{}])[0]
        queue = headers.get("x-first-death-queue") or death.get("queue") or message.delivery_info.get("routing_key")
        body, handler = message.body, ""
        if headers.get("task"):  # a Celery task message: keep the event it carried, so replay can resend it
            handler = headers["task"]
            body = _task_event(message.body) or message.body
        try:
            deadletters.store(
                reason=DeadLetter.Reason.BROKER,
                queue=str(queue),
                handler=handler,
                body=body,
                content_type=message.content_type or "",
                headers=headers,
                error=f"dead-lettered by RabbitMQ: {headers.get('x-first-death-reason') or death.get('reason')}",
                attempts=int(death.get("count") or 1),
                redelivered=_redelivered(message),
            )
        except DatabaseError:
            logger.exception("cannot file a broker dead letter yet")
            reconnect_database()
            self._requeue_later([message])
            return
        message.ack()

    @staticmethod
    def _requeue_later(messages: list[Message]) -> None:
        # A short pause keeps a failing dependency from turning into a hot redelivery loop; the
        # queue's delivery limit still bounds how often it comes back.
        time.sleep(1)
        for message in messages:
            message.requeue()


def _redelivered(message: Message) -> bool:
    """Whether the broker delivered `message` before (to a consumer that did not acknowledge it)."""
    return bool((message.delivery_info or {}).get("redelivered"))


def _task_event(body: bytes) -> dict[str, Any] | None:
    try:
        args = json.loads(body)[0]
    except (ValueError, IndexError, KeyError, TypeError):
        return None
    return args[0] if args and isinstance(args[0], dict) else None
