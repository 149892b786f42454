"""Test data builders shared by app and cross-service tests."""

from __future__ import annotations

import uuid
from decimal import Decimal

from eventbus.sealing import seal
from inventory.models import Product
from inventory.services import availability_refresh
from orders.events import OrderItem, OrderPlaced
from orders.models import CatalogProduct


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
