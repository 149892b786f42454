"""The bench's plain Celery saga (bench.plain), its tasks run one by one in this process in the order they
were sent: a confirmed order ships its stock and captures its payment, a declined one gives its stock back."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from celery.app.task import Task

from bench.plain import tasks
from inventory.models import Product, Reservation
from orders.models import Order
from payments.models import Payment
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Task, tuple, dict, str]]:
    """Every task sent (`delay`), with the queue its app routes it to, kept here instead of going to the broker."""
    messages: list[tuple[Task, tuple, dict, str]] = []

    def keep(task: Task, args: tuple | None = None, kwargs: dict | None = None, **options: object) -> None:
        queue = task.app.amqp.router.route(options, task.name, args, kwargs, task)["queue"].name
        messages.append((task, tuple(args or ()), dict(kwargs or {}), queue))

    monkeypatch.setattr(Task, "apply_async", keep)
    return messages


def run_saga(token: str, sent: list, on_commit: Callable) -> tuple[Order, list[str]]:
    """Place an order (P001 twice, P002) with the plain pipeline, then run each task sent, committed, until none is
    left; return the order and the tasks run."""
    lines = [("P001", 2), ("P002", 1), ("P001", 1)]
    with on_commit(execute=True):
        order = factories.order(*lines, token=token, email="plain@example.com", place=tasks.order_place)
    ran = []
    while sent:
        task, args, kwargs, queue = sent.pop(0)
        with on_commit(execute=True):
            task(*args, **kwargs)
        ran.append(f"{task.name} on {queue}")
    order.refresh_from_db()
    return order, ran


def stock(sku: str) -> tuple[int, int]:
    product = Product.objects.get(sku=sku)
    return product.stock_on_hand, product.stock_reserved


def test_a_confirmed_order_ships_its_stock_and_captures_its_payment(sent, django_capture_on_commit_callbacks):
    factories.product("P001", price="10.00", stock=10)
    factories.product("P002", price="4.50", stock=5)

    order, ran = run_saga("tok_visa", sent, django_capture_on_commit_callbacks)

    assert (order.status, order.stock_leg, order.payment_leg) == ("confirmed", "reserved", "authorized")
    assert order.decided_at is not None
    assert ran == [
        "plain.inventory.reserve_stock on plain.inventory",
        "plain.payments.authorize_payment on plain.payments",
        "plain.orders.saga_step on plain.orders",
        "plain.orders.saga_step on plain.orders",
        "plain.inventory.commit_stock on plain.inventory",
        "plain.payments.capture_payment on plain.payments",
    ]
    assert stock("P001") == (7, 0)
    assert stock("P002") == (4, 0)
    assert Reservation.objects.get(order_id=order.id).status == Reservation.Status.COMMITTED
    payment = Payment.objects.get(order_id=order.id)
    assert (payment.status, payment.amount) == (Payment.Status.CAPTURED, Decimal("34.50"))

    # A leg delivered again holds nothing more and changes no decision.
    with django_capture_on_commit_callbacks(execute=True):
        tasks.reserve_stock(str(order.id), [["P001", 3], ["P002", 1]])
        tasks.saga_step(str(order.id), stock="reserved")
    assert stock("P001") == (7, 0)
    assert [(task.name, kwargs) for task, _, kwargs, _ in sent] == [
        ("plain.orders.saga_step", {"stock": "reserved", "reason": ""})
    ]


def test_a_declined_order_is_cancelled_and_gives_its_stock_back(sent, django_capture_on_commit_callbacks):
    factories.product("P001", price="10.00", stock=10)
    factories.product("P002", price="4.50", stock=5)

    order, ran = run_saga("tok_decline", sent, django_capture_on_commit_callbacks)

    assert (order.status, order.cancel_reason) == ("cancelled", "payment: card declined")
    assert order.decided_at is not None
    assert sorted(ran[-2:]) == [
        "plain.inventory.release_stock on plain.inventory",
        "plain.payments.void_payment on plain.payments",
    ]
    assert stock("P001") == (10, 0)
    assert stock("P002") == (5, 0)
    assert Reservation.objects.get(order_id=order.id).status == Reservation.Status.RELEASED
    assert Payment.objects.get(order_id=order.id).status == Payment.Status.DECLINED
