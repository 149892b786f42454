"""Subscriptions: a service names the events it handles; queues, bindings and tasks follow from that.

    inventory = Subscriber("inventory")    # consumes the queue `inventory.events`

    @inventory.on(OrderPlaced)
    def reserve_stock(data: OrderPlaced, event: CloudEvent) -> None: ...

Pure data, named by eventbus.names: eventbus.handling turns each handler into a Celery task named
`<service>.<function>`, and each service's waiting events into `<service>.handle_batch` tasks, on the
`<service>.tasks` queue. A new service is an app with a Subscriber and its handlers, in INSTALLED_APPS:
broker_setup, the broker identities, Celery's routes and devstack's workers all read this registry.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventbus.contracts import Contract, EventData
from eventbus.envelope import CloudEvent
from eventbus.names import batch_task_name, dead_letter_queue_name, event_queue_name, handler_task_name, task_queue_name

HandlerFunction = Callable[[Any, CloudEvent], None]
TASK_ID_NAMESPACE = uuid.UUID("6f1b0c3e-5a52-4c8e-9d7e-2f1c8b7a4e10")


@dataclass(frozen=True)
class Handler:
    name: str
    service: str
    contract: Contract
    function: HandlerFunction

    @property
    def task_queue(self) -> str:
        return task_queue_name(self.service)

    def task_id(self, event_id: str) -> str:
        """The same (handler, event) always gets the same task id: one row in Flower and the results."""
        return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{self.name}:{event_id}"))


@dataclass(frozen=True)
class Preload:
    """Rows of `model` whose `field` equals the member `key` of an event's data as it travels (camelCase; by default
    the order's id), which the service's handlers lock: a batch handled whole reads them for all its events at
    once (eventbus.preload)."""

    model: type[Any]
    field: str = "pk"
    key: str = "orderId"


@dataclass
class Subscriber:
    """A consuming service: its event queue (by default `<service>.events`), the handlers that queue feeds, and
    the rows they lock (`preload`)."""

    service: str
    queue: str = ""
    handlers: list[Handler] = field(default_factory=list)
    preload: tuple[Preload, ...] = ()

    def __post_init__(self) -> None:
        self.queue = self.queue or event_queue_name(self.service)
        existing = _subscribers.get(self.service)
        if existing is not None and existing.queue != self.queue:
            raise ValueError(f"service {self.service!r} already consumes {existing.queue!r}")
        _subscribers[self.service] = self

    @property
    def task_queue(self) -> str:
        return task_queue_name(self.service)

    @property
    def batch_task(self) -> str:
        """The task that handles several of this service's events at once (eventbus.handling.run_batch)."""
        return batch_task_name(self.service)

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue of this service alone: its event queue, its task queue and their dead-letter queues."""
        own = (self.queue, self.task_queue)
        return (*own, *map(dead_letter_queue_name, own))

    def on(self, data_class: type[EventData]) -> Callable[[HandlerFunction], HandlerFunction]:
        """Subscribe the decorated function to one event type (every version, upcast to this one)."""

        def register(function: HandlerFunction) -> HandlerFunction:
            name = handler_task_name(self.service, function.__name__)
            handler = Handler(name, self.service, data_class.contract, function)
            if any(existing.name == handler.name for existing in self.handlers):
                raise ValueError(f"handler {handler.name} is declared twice")
            if handler.name == self.batch_task:
                raise ValueError(f"{handler.name} is the name of the service's batch task; name the handler otherwise")
            self.handlers.append(handler)
            return function

        return register

    def bindings(self) -> set[tuple[str, str]]:
        """(producer, routing key) pairs this service's queue is bound with, on the producer's exchange."""
        return {(h.contract.producer, h.contract.routing_key) for h in self.handlers}

    def handlers_for(self, event_type: str) -> list[Handler]:
        """The handlers of any version of `event_type` (each reads it upcast to its own version)."""
        family = event_type.rsplit(".v", 1)[0]
        return [h for h in self.handlers if h.contract.family == family]


_subscribers: dict[str, Subscriber] = {}


def subscribers() -> list[Subscriber]:
    return list(_subscribers.values())


def subscriber_named(service: str) -> Subscriber | None:
    return _subscribers.get(service)


def subscriber_for_task_queue(queue: str) -> Subscriber | None:
    return next((s for s in _subscribers.values() if s.task_queue == queue), None)


def handler_by_name(name: str) -> Handler:
    for subscriber in _subscribers.values():
        for handler in subscriber.handlers:
            if handler.name == name:
                return handler
    raise LookupError(f"no handler named {name!r}")
