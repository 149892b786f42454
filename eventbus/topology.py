"""The broker topology, declared from code: task queues, event exchanges, subscriber queues, dead letters.

Everything follows from the subscription registry and the contracts, named by eventbus.names: a service added
to INSTALLED_APPS gets its task queue (given to Celery when the apps are ready, and routed to by task name),
its event queue with its bindings, and the dead-letter queues of both.

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
from eventbus.names import dead_letter_queue_name, event_exchange_name, service_of_task
from eventbus.subscriptions import Subscriber, subscriber_named, subscribers

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
    name = dead_letter_queue_name(queue_name)
    return Queue(name, DEAD_LETTER_EXCHANGE, routing_key=name, durable=True, queue_arguments={"x-queue-type": "quorum"})


def event_exchange(producer: str) -> Exchange:
    """The topic exchange a producing service publishes its events to, e.g. `orders.events`.

    Events no queue is bound for go to `eventbus.unrouted` instead of vanishing."""
    return Exchange(
        event_exchange_name(producer),
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


def task_queue(name: str) -> Queue:
    """A Celery task queue: quorum, on its own topic exchange, dead-lettering to `<name>.dlq`."""
    return Queue(
        name,
        Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        # Declared once, by `manage.py broker_setup`: the users that send to it or consume it may not declare it.
        no_declare=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": settings.TASK_QUEUE_DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
            "x-dead-letter-routing-key": dead_letter_queue_name(name),
        },
    )


def task_queues() -> list[Queue]:
    """Every task queue: each subscribing service's `<service>.tasks`, then the bus's housekeeping queue."""
    names = [subscriber.task_queue for subscriber in subscribers()] + [settings.CELERY_TASK_DEFAULT_QUEUE]
    return [task_queue(name) for name in names]


def add_task_queues(app: Celery) -> None:
    """Give `app` every task queue, in place of the plain default queue Celery makes without one: run when the
    apps are ready (the subscriptions registered), which in a worker is before it picks its queues (`-Q`)."""
    for queue in task_queues():
        # As if configured: what a worker started without `-Q` consumes (a plain add would only route to it).
        app.amqp.queues.select_add(queue)


def route_task(name: str, *_: object, **__: object) -> dict[str, str] | None:
    """Celery's router (CELERY_TASK_ROUTES): a subscribing service's tasks, `<service>.*`, go to its task queue;
    any other task to the default (housekeeping) queue."""
    subscriber = subscriber_named(service_of_task(name))
    return {"queue": subscriber.task_queue} if subscriber else None


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
