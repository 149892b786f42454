"""Stand-ins for calling handling directly, without a worker: the bound task a handler or batch runs as, a handler
doing what a test needs, and the inventory subscriber, as it is or with that handler alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace

from celery.exceptions import Retry

from eventbus.subscriptions import Handler, Subscriber, handler_by_name, subscribers


class FakeTask:
    """Stands in for a bound handler or batch task called directly: its request (retry count, id, and the headers
    of its message, which Celery makes request attributes); retry() recording the countdown and giving Celery's
    Retry, as a worker's does; and an app whose send_task records what is sent."""

    def __init__(self, retries: int = 0, *, task_id: str = "task-1", headers: dict | None = None) -> None:
        self.request = SimpleNamespace(
            id=task_id, retries=retries, called_directly=True, properties={}, **(headers or {})
        )
        self.countdowns: list[float] = []
        self.sent: list[dict] = []
        self.app = SimpleNamespace(send_task=lambda name, **options: self.sent.append({"name": name, **options}))

    def retry(self, *, exc: Exception, countdown: float, max_retries: int | None) -> Retry:
        self.countdowns.append(countdown)
        return Retry(exc=exc, when=countdown)


def reserve_stock_doing(function: Callable, *, name: str = "inventory.reserve_stock") -> Handler:
    """inventory's reserve_stock handler doing `function` instead, under `name`."""
    return replace(handler_by_name("inventory.reserve_stock"), name=name, function=function)


def inventory() -> Subscriber:
    """The inventory service's subscriber, as registered."""
    return next(s for s in subscribers() if s.service == "inventory")


def inventory_with(handler: Handler) -> SimpleNamespace:
    """The inventory subscriber with `handler` as its only handler."""
    real = inventory()
    return SimpleNamespace(
        service=real.service,
        batch_task=real.batch_task,
        task_queue=real.task_queue,
        preload=real.preload,
        handlers_for=lambda _: [handler],
    )
