"""Poison: messages the event intake must dead-letter at once and never hand to a handler. The chaos run
injects them, and tests/test_event_backbone.py checks how each is filed; both make them here."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventbus.envelope import CONTENT_TYPE

PICKLE = "application/x-python-serialize"


class Unpickled:
    """Unpickling this creates the marker file: the proof that a pickle body was deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@dataclass
class Poison:
    token: str  # in its body, so that its dead letter can be found
    what: str
    body: bytes
    content_type: str
    published: datetime = field(default_factory=lambda: datetime.now(UTC))


def order_placed(*, event_id: str, order_id: str, sku: str, payment_token: str) -> dict[str, Any]:
    """A valid orders.OrderPlaced.v1 CloudEvent of one line of `sku`, dated now (an older one could
    expire: the inbox window). `payment_token` goes in as given: seal it first for a handler to use it."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "specversion": "1.0", "id": event_id, "source": "/orders", "type": "orders.OrderPlaced.v1",
        "time": now, "datacontenttype": "application/json",
        "data": {"orderId": order_id, "items": [{"productId": sku, "quantity": 1}], "totalAmount": "10.00",
                 "currency": "USD", "timestamp": now, "paymentToken": payment_token},
    }  # fmt: skip


def poison_batch(*, token: str, event: dict[str, Any], marker_dir: Path) -> list[Poison]:
    """Four poison messages made from the valid `event`, in this order: malformed JSON, the event with no
    items (a wrong schema), an unknown event type, and a pickle whose loading would create a file
    `unpickled-<token>-pickle` in `marker_dir`. Each carries `token`, in its id or its marker's name."""
    wrong_schema = {**event, "id": f"{token}-schema", "data": {**event["data"], "items": []}}
    unknown_type = {**event, "id": f"{token}-type", "type": "orders.OrderTeleported.v1"}
    marker = marker_dir / f"unpickled-{token}-pickle"
    return [
        Poison(f"{token}-malformed", "malformed JSON", f'{{"id": "{token}-malformed", "specversion": '.encode(),
               CONTENT_TYPE),
        Poison(f"{token}-schema", "wrong schema", json.dumps(wrong_schema).encode(), CONTENT_TYPE),
        Poison(f"{token}-type", "unknown type", json.dumps(unknown_type).encode(), CONTENT_TYPE),
        Poison(f"{token}-pickle", "pickle", pickle.dumps(Unpickled(marker)), PICKLE),
    ]  # fmt: skip
