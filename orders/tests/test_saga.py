"""The saga's decision, unit by unit and under every ordering and duplication of its events."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus.models import OutboxMessage
from inventory.events import ReservedLine, StockReserved
from orders.models import Order
from orders.services import (
    order_cancel_stale,
    order_record_authorization,
    order_record_leg,
)
from payments.events import PaymentAuthorized
from tests import factories
from tests.delivery import deliver

pytestmark = pytest.mark.django_db
Stock, Payment = Order.StockLeg, Order.PaymentLeg


def new_order(price: str = "10.00") -> Order:
    factories.product("P001", price=price, stock=100)
    return factories.order(("P001", 1))


def decisions(order: Order) -> list[str]:
    return list(
        OutboxMessage.objects.filter(
            correlation_id=str(order.id), event_type__in=["orders.OrderConfirmed.v1", "orders.OrderCancelled.v1"]
        ).values_list("event_type", flat=True)
    )


# Each leg's outcomes as the saga's handlers record them; the order totals 10.00 USD.
LEG_EVENTS = {
    "reserved": lambda order: order_record_leg(order_id=order.id, stock=Stock.RESERVED),
    "rejected": lambda order: order_record_leg(
        order_id=order.id, stock=Stock.REJECTED, reason="P001 insufficient stock"
    ),
    "authorized": lambda order: order_record_authorization(order_id=order.id, amount=Decimal("10.00"), currency="USD"),
    "underpaid": lambda order: order_record_authorization(order_id=order.id, amount=Decimal("0.01"), currency="USD"),
    "declined": lambda order: order_record_leg(order_id=order.id, payment=Payment.DECLINED, reason="card declined"),
}
UNDERPAID = "payment: authorized 0.01 USD, but the order totals 10.00 USD"
EXPECTED = {
    ("reserved", "authorized"): ("confirmed", ""),
    ("reserved", "declined"): ("cancelled", "payment: card declined"),
    ("reserved", "underpaid"): ("cancelled", UNDERPAID),
    ("rejected", "authorized"): ("cancelled", "stock: P001 insufficient stock"),
    ("rejected", "declined"): ("cancelled", "stock: P001 insufficient stock; payment: card declined"),
    ("rejected", "underpaid"): ("cancelled", f"stock: P001 insufficient stock; {UNDERPAID}"),
}


@st.composite
def deliveries(draw):
    """One outcome per leg, each delivered one to three times, in any interleaving."""
    stock = draw(st.sampled_from(["reserved", "rejected"]))
    payment = draw(st.sampled_from(["authorized", "declined", "underpaid"]))
    events = [stock] * draw(st.integers(1, 3)) + [payment] * draw(st.integers(1, 3))
    return (stock, payment), draw(st.permutations(events))


@settings(max_examples=60, deadline=None)
@given(deliveries())
def test_every_ordering_and_duplication_of_the_legs_ends_in_the_same_state(case):
    (stock, payment), sequence = case
    order = new_order()

    for name in sequence:
        LEG_EVENTS[name](order)

    order.refresh_from_db()
    assert (order.status, order.cancel_reason) == EXPECTED[(stock, payment)]
    assert len(decisions(order)) == 1, "the saga decides exactly once"


def test_an_order_waits_for_both_legs():
    order = new_order()
    order_record_leg(order_id=order.id, stock=Stock.RESERVED)
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING and decisions(order) == []


def test_a_stale_pending_order_is_cancelled_for_timeout_once_and_a_late_leg_keeps_that_reason():
    order = new_order()
    Order.objects.filter(pk=order.pk).update(created_at=order.created_at - timedelta(minutes=10))

    assert order_cancel_stale(older_than=timedelta(minutes=5)) == 1
    assert order_cancel_stale(older_than=timedelta(minutes=5)) == 0
    order_record_leg(order_id=order.id, payment=Payment.DECLINED, reason="card declined")

    order.refresh_from_db()
    assert (order.status, order.cancel_reason) == ("cancelled", "timeout")
    assert decisions(order) == ["orders.OrderCancelled.v1"]


def test_a_leg_for_an_unknown_order_changes_nothing():
    # Given a pending order, and what is stored
    new_order()
    stored = (list(Order.objects.values()), list(OutboxMessage.objects.values()))

    # When both legs of an order that does not exist arrive
    unknown = uuid.uuid4()
    assert order_record_leg(order_id=unknown, stock=Stock.RESERVED) is None
    assert order_record_authorization(order_id=unknown, amount=Decimal("10.00"), currency="USD") is None

    # Then no order is created or changed, and nothing is announced
    assert (list(Order.objects.values()), list(OutboxMessage.objects.values())) == stored


@pytest.mark.parametrize(("amount", "currency"), [("0.01", "USD"), ("75.00", "EUR"), ("750.00", "USD")])
def test_an_authorization_for_another_amount_cancels_the_order_naming_both_amounts(amount, currency):
    # Given a pending 75.00 USD order whose stock is reserved
    order = new_order(price="75.00")
    reserved = StockReserved(order_id=order.id, lines=[ReservedLine(product_id="P001", quantity=1)])
    deliver("orders.stock_reserved", reserved, correlation_id=str(order.id))

    # When an authorization of another amount or currency arrives (the forged one of issue 10: 0.01)
    authorized = PaymentAuthorized(order_id=order.id, payment_id=uuid.uuid4(), amount=amount, currency=currency)
    deliver("orders.payment_authorized", authorized, correlation_id=str(order.id))

    # Then the order is not confirmed but cancelled, and the cancellation voids and releases the holds
    order.refresh_from_db()
    assert (order.status, order.payment_leg) == (Order.Status.CANCELLED, Payment.DECLINED)
    assert order.cancel_reason == f"payment: authorized {amount} {currency}, but the order totals 75.00 USD"
    assert decisions(order) == ["orders.OrderCancelled.v1"]


def test_an_authorization_of_the_order_total_confirms_it():
    order = new_order(price="75.00")
    order_record_leg(order_id=order.id, stock=Stock.RESERVED)
    order_record_authorization(order_id=order.id, amount=Decimal("75.0"), currency="USD")
    order.refresh_from_db()
    assert order.status == Order.Status.CONFIRMED and decisions(order) == ["orders.OrderConfirmed.v1"]
