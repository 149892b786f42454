"""Test data builders shared by app and cross-service tests."""

from __future__ import annotations

from decimal import Decimal

from inventory.models import Product
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
    return item
