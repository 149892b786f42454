"""Shipping's one subscription: every placed order, noted where the test reads it, with the worker that ran it."""

import json
from pathlib import Path

from celery import current_task
from django.conf import settings

from eventbus.envelope import CloudEvent
from eventbus.subscriptions import Subscriber
from orders.events import OrderPlaced

shipping = Subscriber("shipping")


def note_path(order_id: object) -> Path:
    """Where the handler notes order `order_id` (the run directory, shared with the workers)."""
    return settings.RUN_DIR / "shipping-notes" / f"{order_id}.json"


@shipping.on(OrderPlaced)
def note_order(data: OrderPlaced, event: CloudEvent) -> None:
    path = note_path(data.order_id)
    path.parent.mkdir(exist_ok=True)
    note = {"eventId": event.id, "items": [item.product_id for item in data.items],
            "worker": current_task.request.hostname}  # fmt: skip
    path.write_text(json.dumps(note))
