"""The order stream: demo products (a few with deliberately low stock) and a seeded mix of orders."""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from django.db import DatabaseError

from inventory.services import product_upsert
from orders.models import CatalogProduct
from orders.services import LineRequest, order_place

PLENTY = 1_000_000
PLENTIFUL = [f"CH{n:02d}" for n in range(1, 8)]
SCARCE = ["LOW1", "LOW2", "LOW3"]
# Share of each kind of order in the stream; out-of-stock ones ask for the scarce products.
MIX = {"normal": 0.65, "declined": 0.10, "flaky": 0.10, "scarce": 0.15}
TOKENS = {"normal": "tok_visa", "declined": "tok_decline", "flaky": "tok_flaky", "scarce": "tok_visa"}


@dataclass(frozen=True)
class PlannedOrder:
    kind: str
    token: str
    lines: tuple[tuple[str, int], ...]


def products_create(*, orders: int) -> dict[str, int]:
    """Create the products through the inventory service (ProductChanged fills the orders catalogue);
    return each one's initial stock."""
    scarce_stock = max(2, orders // 200)
    stock = {sku: PLENTY for sku in PLENTIFUL} | {sku: scarce_stock for sku in SCARCE}
    for index, (sku, units) in enumerate(stock.items()):
        product_upsert(sku=sku, name=f"Chaos product {sku}", price=Decimal(5 + index), stock_on_hand=units)
    return stock


def catalogue_ready(skus: list[str]) -> bool:
    return CatalogProduct.objects.filter(sku__in=skus).count() == len(skus)


def plan(*, orders: int, rng: random.Random) -> list[PlannedOrder]:
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=orders)
    planned = []
    for kind in kinds:
        skus = rng.sample(PLENTIFUL, rng.randint(1, 3))
        if kind == "scarce":
            skus = [rng.choice(SCARCE), *skus[:1]]
        planned.append(PlannedOrder(kind, TOKENS[kind], tuple((sku, rng.randint(1, 3)) for sku in skus)))
    return planned


def place(order: PlannedOrder) -> UUID | None:
    """Place one order through the orders service; None when the database refused it (nothing was stored)."""
    try:
        placed = order_place(
            customer_email="chaos@example.com",
            payment_token=order.token,
            items=[LineRequest(sku, quantity) for sku, quantity in order.lines],
        )
    except DatabaseError:
        return None
    return placed.id
