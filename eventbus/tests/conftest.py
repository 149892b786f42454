"""Fixtures shared by the event bus's unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from celery import current_app
from kombu import Queue
from kombu.message import Message


@pytest.fixture
def inventory_events(monkeypatch) -> Iterator[Callable[[], list[Message]]]:
    """The broker swapped for kombu's in-memory transport; returns a function that drains what reached
    `inventory.events` (where replays of inventory's dead letters go)."""
    # Not broker_url: Celery reads CELERY_BROKER_URL from the environment first, and `make test` sets it.
    monkeypatch.setitem(current_app.conf, "broker_write_url", "memory://")
    with current_app.connection_for_write() as connection:
        queue = Queue("inventory.events")(connection.default_channel)
        queue.declare()
        queue.purge()

        def drain() -> list[Message]:
            messages = []
            while (message := queue.get(no_ack=True)) is not None:
                messages.append(message)
            return messages

        yield drain
