"""The plain saga's tasks, one per step, each starting the next once its transaction committed.

An order starts two legs in parallel, reserve_stock (on plain.inventory) and authorize_payment (on
plain.payments); each reports to saga_step (plain.orders), which decides once both are in and starts
commit_stock and capture_payment, or release_stock and void_payment. Only the bench loads this module:
its workers through bench.plain.app, the bench process when it places the plain orders.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from django.db import OperationalError, transaction

from bench.plain import services
from bench.plain.app import app
from orders.models import Order
from orders.services import LineRequest

# A database busy or restarting is worth another try later; everything else fails the task.
RETRY = {"autoretry_for": (OperationalError,), "retry_backoff": True}


def order_place(*, customer_email: str, payment_token: str, items: list[LineRequest]) -> Order:
    """Place a pending order and, once it is committed, start both legs of its saga."""
    with transaction.atomic():
        order = services.order_create(customer_email=customer_email, payment_token=payment_token, items=items)
        order_id = str(order.id)
        reserve_stock.delay_on_commit(order_id, services.order_lines(order))
        authorize_payment.delay_on_commit(order_id, payment_token, f"{order.total_amount:.2f}", order.currency)
    return order


@app.task(name="plain.inventory.reserve_stock", **RETRY)
def reserve_stock(order_id: str, lines: list[list]) -> str | None:
    """Hold the order's stock and report the stock leg."""
    leg = services.stock_reserve(order_id=UUID(order_id), lines=[(sku, quantity) for sku, quantity in lines])
    if leg is None:
        return None
    saga_step.delay_on_commit(order_id, stock=leg.outcome, reason=leg.reason)
    return leg.outcome


@app.task(name="plain.payments.authorize_payment", **RETRY)
def authorize_payment(order_id: str, token: str, amount: str, currency: str) -> str | None:
    """Authorize the order's total and report the payment leg."""
    leg = services.payment_authorize(order_id=UUID(order_id), token=token, amount=Decimal(amount), currency=currency)
    if leg is None:
        return None
    saga_step.delay_on_commit(order_id, payment=leg.outcome, reason=leg.reason)
    return leg.outcome


@app.task(name="plain.orders.saga_step", **RETRY)
def saga_step(order_id: str, *, stock: str | None = None, payment: str | None = None, reason: str = "") -> str | None:
    """Record one leg; when that decides the order, start its confirmation or its compensation."""
    order = services.order_record_leg(order_id=UUID(order_id), stock=stock, payment=payment, reason=reason)
    if order is None:
        return None
    if order.status == Order.Status.CONFIRMED:
        commit_stock.delay_on_commit(order_id, services.order_lines(order))
        capture_payment.delay_on_commit(order_id, f"{order.total_amount:.2f}", order.currency)
    else:
        release_stock.delay_on_commit(order_id)
        void_payment.delay_on_commit(order_id)
    return order.status


@app.task(name="plain.inventory.commit_stock", **RETRY)
def commit_stock(order_id: str, lines: list[list]) -> None:
    """Ship a confirmed order's held stock."""
    services.stock_commit(order_id=UUID(order_id), lines=[(sku, quantity) for sku, quantity in lines])


@app.task(name="plain.payments.capture_payment", **RETRY)
def capture_payment(order_id: str, amount: str, currency: str) -> None:
    """Capture a confirmed order's authorization."""
    services.payment_capture(order_id=UUID(order_id), amount=Decimal(amount), currency=currency)


@app.task(name="plain.inventory.release_stock", **RETRY)
def release_stock(order_id: str) -> None:
    """Give back a cancelled order's stock."""
    services.stock_release(order_id=UUID(order_id))


@app.task(name="plain.payments.void_payment", **RETRY)
def void_payment(order_id: str) -> None:
    """Void a cancelled order's authorization."""
    services.payment_void(order_id=UUID(order_id))
