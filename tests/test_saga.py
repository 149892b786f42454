"""The order saga end to end: real broker, worker processes per service, relay and database."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection

from inventory.models import Product
from orders.models import Order
from orders.selectors import order_timeline
from payments.models import Payment
from tests import factories
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def final(order: Order, *, settled: set[str] | None = None) -> Order:
    """Wait until the order is decided and its compensation or capture has run."""

    def decided():
        current = Order.objects.get(pk=order.pk)
        if current.status == Order.Status.PENDING:
            return None
        payment = Payment.objects.filter(order_id=order.pk).first()
        return current if payment and payment.status in (settled or {payment.status}) else None

    return wait_for(decided, timeout=60, what=f"order {order.pk} to be decided")


def test_a_normal_order_is_confirmed_its_stock_taken_and_its_payment_captured(workers):
    factories.product("P101", price="75.00", stock=10)
    factories.product("P102", price="5.00", stock=10)

    order = final(factories.order(("P101", 2), ("P102", 1)), settled={Payment.Status.CAPTURED})

    assert order.status == Order.Status.CONFIRMED and order.cancel_reason == ""
    wait_for(lambda: Product.objects.get(sku="P101").stock_on_hand == 8, what="stock shipped")
    assert [(p.stock_on_hand, p.stock_reserved) for p in Product.objects.order_by("sku")] == [(8, 0), (9, 0)]
    payment = Payment.objects.get(order_id=order.pk)
    assert payment.amount == Decimal("155.00")
    types = [entry.type for entry in order_timeline(order_id=order.pk)]
    assert types[0] == "orders.OrderPlaced.v1"
    assert {"inventory.StockReserved.v1", "payments.PaymentAuthorized.v1", "orders.OrderConfirmed.v1",
            "payments.PaymentCaptured.v1"} <= set(types)  # fmt: skip


def test_a_declined_card_cancels_the_order_and_puts_the_stock_back(workers):
    factories.product("P103", stock=4)

    order = final(factories.order(("P103", 3), token="tok_decline"))

    assert order.status == Order.Status.CANCELLED and order.cancel_reason == "payment: card declined"
    wait_for(lambda: Product.objects.get(sku="P103").stock_reserved == 0, what="stock released")
    assert Product.objects.get(sku="P103").stock_on_hand == 4
    assert Payment.objects.get(order_id=order.pk).status == Payment.Status.DECLINED
    assert not Payment.objects.filter(status=Payment.Status.CAPTURED).exists()


def test_missing_stock_cancels_the_order_naming_the_product_and_voids_the_payment(workers):
    factories.product("P104", stock=1)
    factories.product("P105", stock=10)

    order = final(factories.order(("P104", 2), ("P105", 1)), settled={Payment.Status.VOIDED})

    assert order.status == Order.Status.CANCELLED
    assert order.cancel_reason == "stock: P104 insufficient stock (requested 2, available 1)"
    assert [(p.stock_on_hand, p.stock_reserved) for p in Product.objects.order_by("sku")] == [(1, 0), (10, 0)]


def test_a_flaky_gateway_is_retried_and_the_order_confirmed(workers):
    factories.product("P106", stock=3)

    order = final(factories.order(("P106", 1), token="tok_flaky"), settled={Payment.Status.CAPTURED})

    assert order.status == Order.Status.CONFIRMED
    placed = order_timeline(order_id=order.pk)[0]
    authorize = next(run for run in placed.handlers if run.handler == "payments.authorize_payment")
    assert (authorize.state, authorize.outcome, authorize.attempt) == ("SUCCESS", "done", 3)


def test_two_concurrent_orders_for_the_last_unit_confirm_exactly_one(workers):
    factories.product("P107", stock=1)
    placed: list[Order] = []

    def buy():
        placed.append(factories.order(("P107", 1)))
        connection.close()

    threads = [threading.Thread(target=buy) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    outcomes = sorted(final(order).status for order in placed)
    assert outcomes == [Order.Status.CANCELLED, Order.Status.CONFIRMED]
    wait_for(lambda: Product.objects.get(sku="P107").stock_on_hand == 0, what="the unit shipped")
    assert Product.objects.get(sku="P107").stock_reserved == 0
