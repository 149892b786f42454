"""Celery wiring of the broker identities: every task message names its sender, a worker knows only its queues.

Nothing here declares the topology any more: `manage.py broker_setup` does, as the administrator, and the
pipeline's users may not (eventbus.identities).
"""

from typing import Any

from celery import current_app
from celery.signals import before_task_publish, worker_init

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
