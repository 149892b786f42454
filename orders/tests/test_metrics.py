"""Decision latency in /metrics: from an order's placing to its saga's decision, observed once the decision commits."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction

from eventbus.tests.scrape import scrape
from orders.models import Order
from orders.services import order_cancel_stale, order_record_leg
from tests import factories

pytestmark = pytest.mark.django_db
COUNT, TOTAL = "orderpipe_order_decision_seconds_count", "orderpipe_order_decision_seconds_sum"


def order_placed_ago(seconds: float) -> Order:
    factories.product("P001", stock=100)
    order = factories.order(("P001", 1))
    Order.objects.filter(pk=order.pk).update(created_at=order.created_at - timedelta(seconds=seconds))
    return order


def test_a_confirmed_order_observes_the_time_from_placing_to_decision(
    client, settings, django_capture_on_commit_callbacks
):
    # Given an order placed 7 seconds ago
    order = order_placed_ago(7)
    before = scrape(client, settings)

    # When both legs succeed
    with django_capture_on_commit_callbacks(execute=True):
        order_record_leg(order_id=order.pk, stock=Order.StockLeg.RESERVED)
        order_record_leg(order_id=order.pk, payment=Order.PaymentLeg.AUTHORIZED)

    # Then one decision of about 7 seconds, under `confirmed`
    after = scrape(client, settings)
    assert after(COUNT, status="confirmed") == before(COUNT, status="confirmed") + 1
    assert 7 <= after(TOTAL, status="confirmed") - before(TOTAL, status="confirmed") < 8
    bucket = "orderpipe_order_decision_seconds_bucket"
    assert after(bucket, status="confirmed", le="5.0") == before(bucket, status="confirmed", le="5.0")
    assert after(bucket, status="confirmed", le="10.0") == before(bucket, status="confirmed", le="10.0") + 1


def test_a_cancellation_counts_under_cancelled_and_a_repeated_leg_decides_nothing_more(
    client, settings, django_capture_on_commit_callbacks
):
    order = order_placed_ago(1)
    before = scrape(client, settings)

    with django_capture_on_commit_callbacks(execute=True):
        order_record_leg(order_id=order.pk, stock=Order.StockLeg.REJECTED, reason="out of stock")
        order_record_leg(order_id=order.pk, stock=Order.StockLeg.REJECTED, reason="out of stock")
        order_record_leg(order_id=order.pk, payment=Order.PaymentLeg.AUTHORIZED)

    assert scrape(client, settings)(COUNT, status="cancelled") == before(COUNT, status="cancelled") + 1


def test_a_decision_rolled_back_is_not_observed(client, settings, django_capture_on_commit_callbacks):
    order = order_placed_ago(1)
    before = scrape(client, settings)

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        order_record_leg(order_id=order.pk, stock=Order.StockLeg.REJECTED, reason="out of stock")
        raise RuntimeError("the handler's transaction fails after the decision")

    assert scrape(client, settings)(COUNT, status="cancelled") == before(COUNT, status="cancelled")


def test_a_timed_out_order_counts_as_cancelled(client, settings, django_capture_on_commit_callbacks):
    order_placed_ago(600)
    before = scrape(client, settings)

    with django_capture_on_commit_callbacks(execute=True):
        assert order_cancel_stale(older_than=timedelta(seconds=60)) == 1

    after = scrape(client, settings)
    assert after(COUNT, status="cancelled") == before(COUNT, status="cancelled") + 1
    assert after(TOTAL, status="cancelled") - before(TOTAL, status="cancelled") >= 600
