"""The naming rule of the transport, in one place: every exchange, queue and task name follows from a service's
name (a producer's, for exchanges) here, and nowhere else.

    <producer>.events         the topic exchange a producer publishes its events to
    <service>.events          a subscribing service's event queue, unless its Subscriber names another
    <service>.tasks           a service's Celery task queue, on a topic exchange of the same name
    <queue>.dlq               where RabbitMQ dead-letters what `<queue>` gives up on
    <service>.<function>      the Celery task of one handler
    <service>.handle_batch    the Celery task that handles a service's waiting events together

Pure functions of strings: the subscription registry imports them, and they import nothing of the project.
"""

from __future__ import annotations


def event_exchange_name(producer: str) -> str:
    """The topic exchange `producer` publishes its events to, e.g. `orders.events`."""
    return f"{producer}.events"


def event_queue_name(service: str) -> str:
    """A subscribing service's event queue by default, e.g. `inventory.events`."""
    return f"{service}.events"


def task_queue_name(service: str) -> str:
    """A service's Celery task queue (and its exchange), e.g. `inventory.tasks`."""
    return f"{service}.tasks"


def dead_letter_queue_name(queue: str) -> str:
    """Where the broker puts what `queue` rejects or gives up on, e.g. `inventory.events.dlq`."""
    return f"{queue}.dlq"


def handler_task_name(service: str, function: str) -> str:
    """The Celery task of a service's handler function, e.g. `inventory.reserve_stock`."""
    return f"{service}.{function}"


def batch_task_name(service: str) -> str:
    """The Celery task that handles several of a service's events at once, e.g. `inventory.handle_batch`."""
    return f"{service}.handle_batch"


def service_of_task(task_name: str) -> str:
    """The service a task belongs to by its name: `inventory.release_stale_holds` is inventory's."""
    return task_name.partition(".")[0]
