"""The intake's hand-over: events become Celery requests of this worker, without a trip through the broker.

A task message sent to the worker's own task queue would cross the broker a second time (a publish, a confirm,
a quorum-queue write, a delivery, an ack) only to come back to the process that sent it. Instead the intake
builds the message Celery would have sent (app.amqp.as_task_v2, the same headers, properties and body) and gives
it to the task's strategy, as the worker's consumer does with a message it received. From there it is an
ordinary request: reserved, shown in Flower, run in the pool with its time limits, its result stored.

The request settles the event messages it was made of: they stay unacknowledged until it is done. Acknowledged
when it succeeded (or failed for good, with its dead letter filed); requeued when Celery rejects it with requeue
(its worker process died, or a batch could not send its events on); rejected, so RabbitMQ dead-letters them to
the event queue's `.dlq`, when Celery rejects it without. One event for several handlers makes several
requests, and its message is settled when the last is done. Retries go through the broker as before, as tasks
of their own on the service's task queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kombu.message import Message
from kombu.serialization import dumps

from eventbus import tracing
from eventbus.identities import url_user


@dataclass
class Delivery:
    """The event messages one hand-over took, settled once every request made of them has been."""

    consumer: Any  # the worker's consumer: its event loop runs the acknowledgements
    messages: list[Message]
    pending: int = 0
    requeue: bool = False
    reject: bool = False
    settled: bool = False

    def on_ack(self, log: logging.Logger, errors: tuple[type[BaseException], ...]) -> None:
        self._done(log, errors)

    def on_reject(self, log: logging.Logger, errors: tuple[type[BaseException], ...], requeue: bool = False) -> None:
        if requeue:
            self.requeue = True
        else:
            self.reject = True
        self._done(log, errors)

    def give_back(self) -> None:
        """Requeue the messages now: the hand-over failed. Requests already made of them settle nothing."""
        if not self.settled:
            self.settled = True
            for message in self.messages:
                message.requeue()

    def _done(self, log: logging.Logger, errors: tuple[type[BaseException], ...]) -> None:
        self.pending -= 1
        if self.pending > 0 or self.settled:
            return
        self.settled = True
        for message in self.messages:
            if self.requeue:
                self.consumer.call_soon_ack(message.reject_log_error, log, errors, requeue=True)
            elif self.reject:
                self.consumer.call_soon_ack(message.reject_log_error, log, errors, requeue=False)
            else:
                self.consumer.call_soon_ack(message.ack_log_error, log, errors)


@dataclass
class InProcessMessage:
    """A task message that never went to the broker, as much of kombu's Message as Celery's strategy reads."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    content_type: str
    content_encoding: str
    payload: tuple[Any, ...]
    delivery_info: dict[str, Any] = field(default_factory=dict)


def start_request(
    consumer: Any,
    delivery: Delivery,
    task_name: str,
    args: list[Any],
    *,
    queue: str,
    task_id: str,
    argsrepr: str,
    headers: dict[str, Any],
) -> None:
    """Make a request of `task_name` with `args` in this worker, as if its message had come from `queue`,
    settling `delivery` when done. With tracing on, the current span (the intake's) is its parent."""
    app = consumer.app
    message = app.amqp.as_task_v2(task_id, task_name, args=args, argsrepr=argsrepr, kwargsrepr="{}")
    content_type, content_encoding, body = dumps(message.body, serializer=app.conf.task_serializer)
    properties = {
        **message.properties,
        # As sign_task would have sent it: from this service's own broker user (eventbus.authenticity).
        "user_id": url_user(app.conf.broker_url),
        "delivery_mode": 2,
        "priority": 0,
    }
    request = InProcessMessage(
        headers={**message.headers, **headers, **tracing.injected()},
        properties=properties,
        body=body.encode() if isinstance(body, str) else body,
        content_type=content_type,
        content_encoding=content_encoding,
        payload=message.body,
        # Never "redelivered": Celery would then reject a request whose worker process died without requeue,
        # dead-lettering the event. The event queue's delivery limit bounds how often one comes back.
        delivery_info={"exchange": queue, "routing_key": queue, "redelivered": False},
    )
    delivery.pending += 1
    consumer.strategies[task_name](request, None, delivery.on_ack, delivery.on_reject, consumer.on_task_message)
