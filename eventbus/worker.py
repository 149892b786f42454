"""Celery wiring of the worker: every task message names its sender, a worker knows only its queues, and its
task events go out without a publisher confirm each.

Nothing here declares the topology any more: `manage.py broker_setup` does, as the administrator, and the
pipeline's users may not (eventbus.identities).
"""

from typing import Any

from celery import current_app
from celery.signals import before_task_publish, worker_init
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection

from eventbus.identities import url_user


@before_task_publish.connect
def sign_task(properties: dict[str, Any], **_: Any) -> None:
    """Send every task message with the AMQP `user_id` of this process's broker user, which RabbitMQ checks: a
    handler task shows that its own service sent it (eventbus.authenticity)."""
    user = url_user(current_app.conf.broker_url)
    if user:
        properties["user_id"] = user


@worker_init.connect
def forget_other_queues(sender: Any = None, **_: Any) -> None:
    """Leave the worker only the task queues it consumes (`-Q`). At start-up Celery binds every queue it knows
    to its delayed-delivery exchange, and a service's broker user may bind its own queues only."""
    queues = sender.app.amqp.queues
    for name in set(queues) - set(queues.consume_from or queues):
        del queues[name]


class Consumer(CeleryConsumer):
    """Celery's worker consumer (CELERY_WORKER_CONSUMER), but for the connection of its task events.

    The broker's `confirm_publish` makes every publish on a connection wait for RabbitMQ's confirm. Task
    messages need that; the task events (received, started, succeeded: three per task, for Flower) do not, and
    the worker sends them from its event loop, where the intake runs too, and each wait held up the events
    behind it (docs/benchmark.md). An event lost when the broker fails is one that Flower does not show; the
    task's state is in the result backend all the same. The plain saga of `make bench` takes the project's
    Celery settings, and so this consumer too.
    """

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Connection:
        # Celery's Events step is this method's one caller: the connection is the event dispatcher's.
        connection = self.app.connection_for_write(
            url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
        )
        return self.ensure_connected(connection)
