"""Stock reservations: all or nothing, never oversold, released and committed once."""

import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from eventbus.models import OutboxMessage
from inventory.models import Product, Reservation
from inventory.services import product_seed_demo, product_upsert, stock_commit, stock_release, stock_reserve
from tests import factories

pytestmark = pytest.mark.django_db


def outbox_types() -> list[str]:
    return list(OutboxMessage.objects.values_list("event_type", flat=True))


def test_an_order_is_held_in_full_or_not_at_all_with_a_reason_per_product():
    factories.product("P001", stock=5)
    factories.product("P002", stock=1)
    factories.product("P003", stock=9)

    # When one line of three cannot be held
    reservation = stock_reserve(order_id=uuid.uuid4(), lines=[("P001", 2), ("P002", 3), ("P404", 1), ("P003", 1)])

    # Then nothing is held, and the rejection names each product and why
    assert reservation.status == Reservation.Status.REJECTED
    assert list(Product.objects.values_list("stock_reserved", flat=True)) == [0, 0, 0]
    rejected = OutboxMessage.objects.get(event_type="inventory.StockRejected.v1").body["data"]["lines"]
    assert rejected == [
        {"productId": "P002", "requested": 3, "available": 1, "reason": "insufficient stock"},
        {"productId": "P404", "requested": 1, "available": 0, "reason": "unknown product"},
    ]


def test_the_last_unit_goes_to_one_order_only():
    factories.product("P001", stock=1)
    first = stock_reserve(order_id=uuid.uuid4(), lines=[("P001", 1)])
    second = stock_reserve(order_id=uuid.uuid4(), lines=[("P001", 1)])
    assert (first.status, second.status) == (Reservation.Status.HELD, Reservation.Status.REJECTED)
    assert Product.objects.get(sku="P001").stock_reserved == 1


def test_an_orders_products_move_together_in_one_statement_when_held_and_when_shipped():
    for sku in ("P001", "P002", "P003"):
        factories.product(sku, stock=5)
    order_id, lines = uuid.uuid4(), [("P003", 1), ("P001", 2), ("P002", 3)]

    with CaptureQueriesContext(connection) as holding:
        stock_reserve(order_id=order_id, lines=lines)
    with CaptureQueriesContext(connection) as shipping:
        stock_commit(order_id=order_id, lines=lines)

    for queries in (holding, shipping):
        assert len([q for q in queries if q["sql"].startswith('UPDATE "inventory_product"')]) == 1
    stock = dict(Product.objects.values_list("sku", "stock_on_hand"))
    assert stock == {"P001": 3, "P002": 2, "P003": 4}
    assert not Product.objects.filter(stock_reserved__gt=0).exists()


def test_release_and_commit_happen_once():
    factories.product("P001", stock=5)
    cancelled, confirmed = uuid.uuid4(), uuid.uuid4()
    stock_reserve(order_id=cancelled, lines=[("P001", 2)])
    stock_reserve(order_id=confirmed, lines=[("P001", 1), ("P001", 1)])

    for _ in range(2):
        stock_release(order_id=cancelled)
        stock_commit(order_id=confirmed, lines=[("P001", 2)])

    product = Product.objects.get(sku="P001")
    assert (product.stock_on_hand, product.stock_reserved) == (3, 0)
    assert outbox_types().count("inventory.StockReleased.v1") == 1


def test_demo_products_are_seeded_once_and_announced_to_the_catalogue():
    assert product_seed_demo() == 10
    assert product_seed_demo() == 0
    assert Product.objects.filter(sku__in=[f"P{n:03}" for n in range(1, 11)]).count() == 10
    assert outbox_types().count("inventory.ProductChanged.v1") == 10


def test_a_price_change_bumps_the_revision_and_is_announced():
    product_upsert(sku="P001", name="Beans", price=Decimal("10.00"), stock_on_hand=3)
    product = product_upsert(sku="P001", name="Beans", price=Decimal("12.00"))
    assert (product.revision, product.stock_on_hand) == (2, 3)
    changes = OutboxMessage.objects.filter(event_type="inventory.ProductChanged.v1").order_by("id")
    assert [row.body["data"]["price"] for row in changes] == ["10.00", "12.00"]
