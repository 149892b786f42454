"""The broker topology, declared from code: task queues, event exchanges, subscriber queues, dead letters.

Declaring is idempotent, so the relay and every worker declare everything at start-up and a
missing exchange or queue never drops a message.
"""

from __future__ import annotations

from celery import Celery
from kombu import Connection, Exchange, Queue

DEAD_LETTER_EXCHANGE = Exchange("eventbus.dlx", type="direct", durable=True)
UNROUTED_EXCHANGE = Exchange("eventbus.unrouted", type="fanout", durable=True)
UNROUTED_QUEUE = Queue("eventbus.unrouted", UNROUTED_EXCHANGE, durable=True, queue_arguments={"x-queue-type": "quorum"})


def dead_letter_queue(queue_name: str) -> Queue:
    """Where RabbitMQ puts what `queue_name` rejects or gives up on (delivery limit exceeded)."""
    name = f"{queue_name}.dlq"
    return Queue(name, DEAD_LETTER_EXCHANGE, routing_key=name, durable=True, queue_arguments={"x-queue-type": "quorum"})


def event_exchange(producer: str) -> Exchange:
    """The topic exchange a producing service publishes its events to, e.g. `orders.events`."""
    return Exchange(
        f"{producer}.events",
        type="topic",
        durable=True,
        arguments={"alternate-exchange": UNROUTED_EXCHANGE.name},
    )


def task_queues(app: Celery) -> list[Queue]:
    return list(app.amqp.queues.values())


def declare_all(connection: Connection, app: Celery) -> None:
    """Declare every exchange, queue and binding the system uses; safe to call any number of times."""
    channel = connection.default_channel
    DEAD_LETTER_EXCHANGE.declare(channel=channel)
    UNROUTED_EXCHANGE.declare(channel=channel)
    UNROUTED_QUEUE.declare(channel=channel)
    for queue in task_queues(app):
        queue(channel).declare()
        dead_letter_queue(queue.name)(channel).declare()
