"""The rows a batch's handlers lock, read once for the batch (eventbus.preload), with the real subscribers'
handlers called directly: one SELECT for the batch, and each handler seeing what an earlier one changed."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from eventbus.envelope import new_event
from eventbus.handling import run_batch
from eventbus.models import OutboxMessage
from eventbus.preload import locked, preloaded
from eventbus.subscriptions import Preload, subscriber_named
from eventbus.tests.stand_ins import FakeTask
from inventory.events import ReservedLine, StockReserved
from inventory.models import Product, Reservation
from orders.events import OrderConfirmed, OrderItem
from orders.models import Order
from payments.events import PaymentAuthorized
from tests import factories

pytestmark = pytest.mark.django_db


def stock_reserved(order: Order) -> dict:
    lines = [ReservedLine(product_id=line.product_id, quantity=line.quantity) for line in order.lines.all()]
    return new_event(StockReserved(order_id=order.id, lines=lines)).to_dict()


def payment_authorized(order: Order) -> dict:
    data = PaymentAuthorized(
        order_id=order.id, payment_id=uuid.uuid4(), amount=f"{order.total_amount:.2f}", currency=order.currency
    )
    return new_event(data).to_dict()


def selects_of(table: str, queries: CaptureQueriesContext) -> list[str]:
    statements = [query["sql"] for query in queries]
    return [sql for sql in statements if sql.startswith("SELECT") and f'FROM "{table}"' in sql]


def test_a_batch_reads_the_rows_its_handlers_lock_in_one_statement():
    factories.product("P001", stock=10)
    orders = [factories.order(("P001", 1)) for _ in range(3)]

    with CaptureQueriesContext(connection) as queries:
        result = run_batch(FakeTask(task_id="batch-1"), subscriber_named("orders"), [stock_reserved(o) for o in orders])

    assert [event["handlers"]["orders.stock_reserved"] for event in result["events"]] == ["done"] * 3
    assert len(selects_of("orders_order", queries)) == 1, "the batch's, not one per event"
    assert set(Order.objects.values_list("stock_leg", flat=True)) == {Order.StockLeg.RESERVED}


def test_a_handler_of_the_batch_sees_what_an_earlier_one_changed():
    # Given an order whose two legs arrive in one batch
    factories.product("P001", stock=10)
    order = factories.order(("P001", 2))

    # When the batch records both
    legs = [stock_reserved(order), payment_authorized(order)]
    run_batch(FakeTask(task_id="batch-1"), subscriber_named("orders"), legs)

    # Then the second leg saw the first, and the saga confirmed the order once
    order.refresh_from_db()
    assert (order.status, order.stock_leg, order.payment_leg) == ("confirmed", "reserved", "authorized")
    assert OutboxMessage.objects.filter(event_type="orders.OrderConfirmed.v1").count() == 1


def test_a_row_a_handler_of_the_batch_created_is_found_by_the_next():
    # Given an order placed and confirmed, both events in one inventory batch
    factories.product("P001", stock=10)
    placed = factories.order_placed_event(("P001", 2))
    order_id = uuid.UUID(placed["data"]["orderId"])
    confirmed = new_event(
        OrderConfirmed(
            order_id=order_id,
            items=[OrderItem(product_id="P001", quantity=2)],
            total_amount="150.00",
            currency="USD",
        )
    ).to_dict()

    # When the batch reserves the stock (no reservation when it began) and then commits it
    result = run_batch(FakeTask(task_id="batch-1"), subscriber_named("inventory"), [placed, confirmed])

    # Then the commit found the reservation made before it in the batch
    handlers = [event["handlers"] for event in result["events"]]
    assert handlers == [{"inventory.reserve_stock": "done"}, {"inventory.commit_stock": "done"}]
    assert Reservation.objects.get(order_id=order_id).status == Reservation.Status.COMMITTED
    product = Product.objects.get(sku="P001")
    assert (product.stock_on_hand, product.stock_reserved) == (8, 0)


def test_an_event_naming_no_row_the_field_can_hold_is_left_out():
    factories.product("P001", stock=10)
    order = factories.order(("P001", 1))
    events = [{"data": {"orderId": "not-a-uuid"}}, {"data": "not an object"}, {"id": "no data"}]

    batch = [*events, {"data": {"orderId": str(order.id)}}]
    with transaction.atomic(), preloaded([Preload(Order)], batch), CaptureQueriesContext(connection) as queries:
        found = locked(Order, pk=order.id)

    assert found is not None and found.pk == order.pk
    assert queries.captured_queries == [], "handed out from the batch's read"


def test_outside_a_batch_a_row_is_read_and_locked_by_itself():
    factories.product("P001", stock=10)
    order = factories.order(("P001", 1))

    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        assert locked(Order, pk=order.id) == order
        assert locked(Order, pk=uuid.uuid4()) is None

    assert len(selects_of("orders_order", queries)) == 2
    if connection.features.has_select_for_update:
        assert all("FOR UPDATE" in sql for sql in selects_of("orders_order", queries))
