"""The order page's trace: a waterfall of the order's events and their handlers, its trace id and link."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_results.models import TaskResult

from eventbus.envelope import from_dict
from eventbus.handling import apply_once
from eventbus.models import OutboxMessage
from eventbus.subscriptions import handler_by_name
from orders.models import Order
from orders.tests.test_admin import add_form, staff  # noqa: F401 (the fixture)

pytestmark = pytest.mark.django_db
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def order(staff) -> Order:  # noqa: F811 (the imported fixture)
    """An order placed in the admin, its OrderPlaced published with a trace context and handled by inventory
    (received 5 ms after it was published); payments has not handled it yet."""
    staff.post("/admin/orders/order/add/", add_form(("P001", 1)))
    row = OutboxMessage.objects.get(event_type="orders.OrderPlaced.v1")
    row.body["traceparent"] = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    row.created_at = timezone.now() - timedelta(seconds=1)  # the handling, below, starts now
    row.sent_at = row.created_at + timedelta(milliseconds=20)
    row.save()
    received = row.sent_at + timedelta(milliseconds=5)
    apply_once(handler_by_name("inventory.reserve_stock"), from_dict(row.body), "task-1", delivered_at=received)
    return Order.objects.get()


def test_the_order_page_draws_each_hop_of_its_events_and_links_the_trace(staff, order, settings):  # noqa: F811
    settings.TRACE_URL_TEMPLATE = "http://localhost:16686/trace/{trace_id}"

    page = staff.get(f"/admin/orders/order/{order.id}/change/").content.decode()

    assert f'href="http://localhost:16686/trace/{TRACE_ID}"' in page and f"<code>{TRACE_ID}</code>" in page
    # OrderPlaced published, handled by inventory, pending at payments; the StockReserved it caused is not published
    lanes = re.findall(r'data-handler="([^"]*)" data-status="(\w+)"', page)
    assert lanes == [("", "done"), ("inventory.reserve_stock", "done"), ("payments.authorize_payment", "pending"),
                     ("", "pending"), ("orders.stock_reserved", "pending")]  # fmt: skip
    assert "outbox 20.0 ms" in page and "broker 5.0 ms" in page
    assert 'class="wf-bar wf-queued"' in page and 'class="wf-bar wf-pending"' in page
    assert "Some hops pending" in page


def test_without_a_trace_url_the_trace_id_is_shown_unlinked(staff, order, settings):  # noqa: F811
    settings.TRACE_URL_TEMPLATE = ""

    page = staff.get(f"/admin/orders/order/{order.id}/change/").content.decode()

    assert f"<code>{TRACE_ID}</code>" in page and "trace-link" not in page


def test_events_without_a_traceparent_say_so(staff):  # noqa: F811
    staff.post("/admin/orders/order/add/", add_form(("P001", 1)))
    order = Order.objects.get()
    OutboxMessage.objects.update(sent_at=timezone.now())

    page = staff.get(f"/admin/orders/order/{order.id}/change/").content.decode()

    assert "No trace id" in page and 'id="trace-waterfall"' in page


def test_a_handler_waiting_to_retry_and_one_dead_lettered_say_so(staff, order):  # noqa: F811
    def task_id(handler: str, event_type: str) -> str:
        return handler_by_name(handler).task_id(str(OutboxMessage.objects.get(event_type=event_type).event_id))

    TaskResult.objects.create(task_id=task_id("payments.authorize_payment", "orders.OrderPlaced.v1"), status="RETRY")
    TaskResult.objects.create(task_id=task_id("orders.stock_reserved", "inventory.StockReserved.v1"), status="FAILURE")

    page = staff.get(f"/admin/orders/order/{order.id}/change/").content.decode()

    handled = re.findall(r'data-hop="handled">([^<]*)<', page)
    assert handled[1] == "retrying" and handled[2].startswith("failed +"), handled
