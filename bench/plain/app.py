"""`celery -A bench.plain.app worker -Q plain.orders`: a Celery app configured from the project's settings
(django-db results, confirms, late acks, prefetch, time limits, task events), with the plain saga's
quorum queues and routes instead of the pipeline's.

An app of its own, so that production workers (`-A orderproj`) never load the plain tasks, and so that its
queues are known before `-Q` selects them (Celery would declare a missing queue as a classic one).
"""

from celery import Celery
from kombu import Exchange, Queue

from bench.plain import QUEUE_NAMES


def quorum_queue(name: str) -> Queue:
    """A durable quorum queue on a topic exchange of its name, as the pipeline's task queues are declared:
    Celery binds only topic exchanges to RabbitMQ's native delayed delivery, which retries use."""
    exchange = Exchange(name, type="topic", durable=True)
    return Queue(name, exchange, routing_key=name, durable=True, queue_arguments={"x-queue-type": "quorum"})


QUEUES = [quorum_queue(name) for name in QUEUE_NAMES]

# Not the current app: the bench process places the pipeline's orders with the project's app too.
app = Celery("plain", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_queues=QUEUES,
    # The queues themselves, not their names: a worker forgets the queues it does not consume
    # (eventbus.worker), and a name it no longer knows would be declared anew as a classic queue.
    task_routes={f"{queue.name}.*": {"queue": queue} for queue in QUEUES},
    include=["bench.plain.tasks"],
)
