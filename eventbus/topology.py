"""The broker topology, declared from code: task queues, event exchanges, subscriber queues, dead letters.

Declared once, by `manage.py broker_setup` as the broker's administrator (idempotent: it runs at every
start of a local stack and with every deployment). The pipeline's own users may not declare anything
but Celery's infrastructure (eventbus.identities): the relay treats a missing exchange as a failed row.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from django.conf import settings
from kombu import Connection, Exchange, Queue, binding

from eventbus.contracts import all_contracts
from eventbus.subscriptions import Subscriber, subscribers

DEAD_LETTER_EXCHANGE = Exchange("eventbus.dlx", type="direct", durable=True)
UNROUTED_EXCHANGE = Exchange("eventbus.unrouted", type="fanout", durable=True)
# Events no service subscribes to (yet) are kept here to be seen, within a bound: the oldest go first.
UNROUTED_QUEUE = Queue(
    "eventbus.unrouted",
    UNROUTED_EXCHANGE,
    durable=True,
    queue_arguments={"x-queue-type": "quorum", "x-max-length": 10_000, "x-overflow": "drop-head"},
)


def dead_letter_queue(queue_name: str) -> Queue:
    """Where RabbitMQ puts what `queue_name` rejects or gives up on (delivery limit exceeded)."""
    name = f"{queue_name}.dlq"
    return Queue(name, DEAD_LETTER_EXCHANGE, routing_key=name, durable=True, queue_arguments={"x-queue-type": "quorum"})


def event_exchange(producer: str) -> Exchange:
    """The topic exchange a producing service publishes its events to, e.g. `orders.events`.

    Events no queue is bound for go to `eventbus.unrouted` instead of vanishing."""
    return Exchange(
        f"{producer}.events",
        type="topic",
        durable=True,
        arguments={"alternate-exchange": UNROUTED_EXCHANGE.name},
    )


def event_queue(name: str, bindings: Iterable[tuple[str, str]]) -> Queue:
    """A queue of events: quorum, bound per (producer, routing key) on the producer's exchange, dead-lettering to
    `<name>.dlq`. A service's (subscriber_queue) or a third party's (`manage.py broker_subscriber --queue`)."""
    return Queue(
        name,
        bindings=[binding(event_exchange(producer), routing_key=key) for producer, key in sorted(bindings)],
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": settings.EVENTBUS_QUEUE_DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
            "x-dead-letter-routing-key": dead_letter_queue(name).name,
        },
    )


def subscriber_queue(subscriber: Subscriber) -> Queue:
    """A consuming service's event queue: quorum, bound per subscribed event, dead-lettering to `.dlq`."""
    return event_queue(subscriber.queue, subscriber.bindings())


def declare_all(connection: Connection, app: Celery) -> None:
    """Declare every exchange, queue and binding the system uses; safe to call any number of times."""
    channel = connection.default_channel
    DEAD_LETTER_EXCHANGE.declare(channel=channel)
    UNROUTED_EXCHANGE.declare(channel=channel)
    UNROUTED_QUEUE(channel).declare()
    for producer in sorted({c.producer for c in all_contracts()}):
        event_exchange(producer).declare(channel=channel)
    for queue in app.amqp.queues.values():
        # Task queues are `no_declare` (see the settings): declared here explicitly, with their exchange.
        task_queue = queue(channel)
        task_queue.exchange.declare()
        task_queue.queue_declare()
        task_queue.queue_bind()
        dead_letter_queue(queue.name)(channel).declare()
    for subscriber in subscribers():
        subscriber_queue(subscriber)(channel).declare()
        dead_letter_queue(subscriber.queue)(channel).declare()
