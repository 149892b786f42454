"""Run by tests/test_new_subscriber.py in a pytest of its own, on tests.settings_shipping: the suite's fixtures
set the broker up and start a worker per service from the subscription registry, which now holds shipping."""

from __future__ import annotations

import json

import pytest

from devstack import pipeline
from eventbus.models import InboxMessage
from orders.models import Order
from orders.services import LineRequest, order_place
from tests import factories
from tests.harness import wait_for
from tests.shipping.handlers import note_path

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_shipping_receives_placed_orders_on_a_worker_of_its_own(workers):
    # Given the suite's stack, which knows shipping from its app alone
    assert [service.name for service in pipeline.services()] == ["orders", "inventory", "payments", "shipping"]
    factories.product("P201", stock=5)

    # When an order is placed
    order = order_place(customer_email="buyer@example.com", payment_token="tok_visa", items=[LineRequest("P201", 2)])

    # Then shipping's own worker handled its OrderPlaced (the inbox row commits with the note) ...
    inbox = wait_for(
        lambda: InboxMessage.objects.filter(handler="shipping.note_order", correlation_id=str(order.pk)).first(),
        timeout=60,
        what="shipping to handle the OrderPlaced",
    )
    note = json.loads(note_path(order.pk).read_text())
    note_path(order.pk).unlink()
    assert note == {"eventId": str(inbox.event_id), "items": ["P201"], "worker": note["worker"]}
    assert note["worker"].startswith("shipping-test@")
    # ... and the saga went on as before
    wait_for(
        lambda: Order.objects.get(pk=order.pk).status == Order.Status.CONFIRMED, timeout=60, what="the order confirmed"
    )
