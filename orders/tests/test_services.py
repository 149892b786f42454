"""Placing orders: priced on the server, announced with the order, rejected whole on bad input."""

from decimal import Decimal

import pytest

from eventbus.models import OutboxMessage
from eventbus.sealing import unseal
from orders.models import CatalogProduct, Order, OrderLine
from orders.services import OrderRejected, catalog_product_apply
from tests import factories

pytestmark = pytest.mark.django_db


def test_an_order_is_priced_from_the_catalogue_and_announced_in_the_same_transaction():
    factories.product("P001", price="75.00")
    factories.product("P002", price="0.50")
    order = factories.order(("P001", 2), ("P002", 1), ("P001", 1))
    assert order.status == Order.Status.PENDING and order.total_amount == Decimal("225.50")
    assert sorted(order.lines.values_list("product_id", "quantity")) == [("P001", 3), ("P002", 1)]
    event = OutboxMessage.objects.get(event_type="orders.OrderPlaced.v1").body
    assert event["data"]["totalAmount"] == "225.50" and event["correlationid"] == str(order.id)
    assert unseal(event["data"]["paymentToken"]) == "tok_visa"
    assert "tok_visa" not in str(event)


@pytest.mark.parametrize(
    ("lines", "token", "field", "message"),
    [
        ([], "tok_visa", "items", "at least one item"),
        ([("P404", 1)], "tok_visa", "items", "Unknown product 'P404'"),
        ([("P001", 0)], "tok_visa", "items", "between 1 and 1000"),
        ([("P001", 10**6)], "tok_visa", "items", "between 1 and 1000"),
        ([("P001", 1)], "visa", "payment_token", "tok_visa"),
    ],
)
def test_bad_orders_are_rejected_whole_and_nothing_is_stored(lines, token, field, message):
    factories.product("P001")
    with pytest.raises(OrderRejected) as rejected:
        factories.order(*lines, token=token)
    assert message in " ".join(rejected.value.errors[field])
    assert not Order.objects.exists() and not OrderLine.objects.exists() and not OutboxMessage.objects.exists()


def test_the_catalogue_ignores_a_late_older_revision():
    assert catalog_product_apply(sku="P009", name="Mug", price=Decimal("2.00"), currency="USD", revision=2)
    assert not catalog_product_apply(sku="P009", name="Old mug", price=Decimal("1.00"), currency="USD", revision=1)
    assert CatalogProduct.objects.get(sku="P009").price == Decimal("2.00")
