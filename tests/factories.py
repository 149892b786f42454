"""Test data builders shared by app and cross-service tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from eventbus.envelope import new_event
from eventbus.models import OutboxMessage
from eventbus.sealing import seal
from inventory.models import Product
from inventory.services import availability_refresh
from orders.events import OrderItem, OrderPlaced
from orders.models import CatalogProduct, Order
from orders.services import LineRequest, order_place


def product(sku: str = "P001", *, price: str = "10.00", stock: int = 10, name: str | None = None) -> Product:
    """A product in inventory and, as the ProductChanged event would leave it, in the orders catalogue."""
    name = name or f"Product {sku}"
    CatalogProduct.objects.update_or_create(
        sku=sku, defaults={"name": name, "price": Decimal(price), "currency": "USD", "revision": 1}
    )
    item, _ = Product.objects.update_or_create(
        sku=sku,
        defaults={"name": name, "price": Decimal(price), "stock_on_hand": stock, "stock_reserved": 0, "revision": 1},
    )
    availability_refresh(skus=[sku])  # as the inventory services do on every stock change
    return item


def order(
    *lines: tuple[str, int],
    token: str = "tok_visa",
    email: str = "a@example.com",
    place: Callable[..., Order] = order_place,
) -> Order:
    """An order of `lines` (sku, quantity) placed as a customer places it: through `place` (the orders service's
    order_place, or a stand-in with its signature), which prices and announces it."""
    return place(customer_email=email, payment_token=token, items=[LineRequest(sku, qty) for sku, qty in lines])


def order_placed(*lines: tuple[str, int], total: str = "150.00") -> OrderPlaced:
    """OrderPlaced data as the orders service would publish it (default: two of P001)."""
    return OrderPlaced(
        order_id=uuid.uuid4(),
        items=[OrderItem(product_id=sku, quantity=qty) for sku, qty in lines or [("P001", 2)]],
        total_amount=total,
        currency="USD",
        timestamp="2023-10-05T12:00:00Z",
        payment_token=seal("tok_visa"),
    )


def order_placed_event(*lines: tuple[str, int], total: str = "150.00", **options: object) -> dict:
    """An OrderPlaced CloudEvent of `order_placed`'s data as it travels (its dict form, as a handler task gets it);
    `options` are new_event's (correlation_id, traceparent, ...)."""
    return new_event(order_placed(*lines, total=total), **options).to_dict()


def outbox_rows(
    *routing_keys: str,
    exchange: str = "orders.events",
    event_type: str = "orders.OrderPlaced.v1",
    created_at: datetime | None = None,
    **fields: object,
) -> list[OutboxMessage]:
    """Outbox rows, one per routing key, of `event_type` (which names the producer a relay publishes them as), each
    with a body of its own and `fields`; written at `created_at` if given (the column is set on insert)."""
    rows = OutboxMessage.objects.bulk_create(
        OutboxMessage(
            event_id=uuid.uuid4(), event_type=event_type, exchange=exchange, routing_key=key, body={"n": n}, **fields
        )
        for n, key in enumerate(routing_keys)
    )
    if created_at is not None:
        OutboxMessage.objects.filter(pk__in=[row.pk for row in rows]).update(created_at=created_at)
    return rows
