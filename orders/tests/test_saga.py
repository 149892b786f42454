"""The saga's decision, unit by unit and under every ordering and duplication of its events."""

import uuid
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus.models import OutboxMessage
from orders.models import Order
from orders.services import LineRequest, order_cancel_stale, order_place, order_record_leg
from tests import factories

pytestmark = pytest.mark.django_db
Stock, Payment = Order.StockLeg, Order.PaymentLeg


def new_order() -> Order:
    factories.product("P001", stock=100)
    return order_place(customer_email="a@example.com", payment_token="tok_visa", items=[LineRequest("P001", 1)])


def decisions(order: Order) -> list[str]:
    return list(
        OutboxMessage.objects.filter(
            correlation_id=str(order.id), event_type__in=["orders.OrderConfirmed.v1", "orders.OrderCancelled.v1"]
        ).values_list("event_type", flat=True)
    )


LEG_EVENTS = {
    "reserved": {"stock": Stock.RESERVED},
    "rejected": {"stock": Stock.REJECTED, "reason": "P001 insufficient stock"},
    "authorized": {"payment": Payment.AUTHORIZED},
    "declined": {"payment": Payment.DECLINED, "reason": "card declined"},
}
EXPECTED = {
    ("reserved", "authorized"): ("confirmed", ""),
    ("reserved", "declined"): ("cancelled", "payment: card declined"),
    ("rejected", "authorized"): ("cancelled", "stock: P001 insufficient stock"),
    ("rejected", "declined"): ("cancelled", "stock: P001 insufficient stock; payment: card declined"),
}


@st.composite
def deliveries(draw):
    """One outcome per leg, each delivered one to three times, in any interleaving."""
    stock = draw(st.sampled_from(["reserved", "rejected"]))
    payment = draw(st.sampled_from(["authorized", "declined"]))
    events = [stock] * draw(st.integers(1, 3)) + [payment] * draw(st.integers(1, 3))
    return (stock, payment), draw(st.permutations(events))


@settings(max_examples=60, deadline=None)
@given(deliveries())
def test_every_ordering_and_duplication_of_the_legs_ends_in_the_same_state(case):
    (stock, payment), sequence = case
    order = new_order()

    for name in sequence:
        order_record_leg(order_id=order.id, **LEG_EVENTS[name])

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
    assert order_record_leg(order_id=uuid.uuid4(), stock=Stock.RESERVED) is None
