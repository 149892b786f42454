"""The plain saga's database work: the rows, row locks and conditional updates of orders.services,
inventory.services and payments.services, without their outbox events. A step is idempotent by the
state it finds, as a Celery user writes it: a reservation or payment per order, a leg recorded once.

A service returns what its task passes on: a leg's outcome (`Leg`) or the order it decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from inventory.models import Product, Reservation
from inventory.services import availability_refresh
from orders.models import Order, OrderLine
from orders.saga import record_leg
from orders.services import LineRequest, order_build
from payments.gateway import CardDeclined, gateway
from payments.models import Payment

# What a leg's record says to the saga; a record not listed (released or voided before the leg ran,
# because the order was cancelled first) says nothing.
STOCK_OUTCOMES = {
    Reservation.Status.HELD: Order.StockLeg.RESERVED,
    Reservation.Status.COMMITTED: Order.StockLeg.RESERVED,
    Reservation.Status.REJECTED: Order.StockLeg.REJECTED,
}
PAYMENT_OUTCOMES = {
    Payment.Status.AUTHORIZED: Order.PaymentLeg.AUTHORIZED,
    Payment.Status.CAPTURED: Order.PaymentLeg.AUTHORIZED,
    Payment.Status.DECLINED: Order.PaymentLeg.DECLINED,
}


class Refused(Exception):
    """A confirmation the stock or the payment cannot honour: nothing held for the order, or not that."""


@dataclass(frozen=True)
class Leg:
    """One leg's outcome for the saga: an Order.StockLeg or Order.PaymentLeg value and why."""

    outcome: str
    reason: str = ""


def order_create(*, customer_email: str, payment_token: str, items: list[LineRequest]) -> Order:
    """A pending order built and saved as orders.services.order_place does it; nothing announced."""
    order, lines = order_build(customer_email=customer_email, payment_token=payment_token, items=items)
    with transaction.atomic():
        order.save(force_insert=True)
        OrderLine.objects.bulk_create(lines)
    return order


@transaction.atomic
def order_record_leg(
    *, order_id: UUID, stock: str | None = None, payment: str | None = None, reason: str = ""
) -> Order | None:
    """Record a leg once and let the saga decide; return the order when this call decided it."""
    order = Order.objects.select_for_update().filter(pk=order_id).first()
    if order is None:
        return None
    decision = record_leg(order, stock=stock, payment=payment, reason=reason)
    decided = decision is not None and order.status == Order.Status.PENDING
    if decided:
        order.status, order.cancel_reason, order.decided_at = decision.status, decision.reason, timezone.now()
    order.save()
    return order if decided else None


def order_lines(order: Order) -> list[tuple[str, int]]:
    """The order's (product, quantity) pairs, which inventory checks its hold against on confirmation."""
    return list(order.lines.values_list("product_id", "quantity"))


@transaction.atomic
def stock_reserve(*, order_id: UUID, lines: list[tuple[str, int]]) -> Leg | None:
    """Hold every line (one conditional update) or none, once per order."""
    reservation = Reservation.objects.filter(order_id=order_id).first()
    if reservation is None:
        wanted = dict(lines)  # order_create merged repeated products
        as_json = [{"product_id": sku, "quantity": qty} for sku, qty in sorted(wanted.items())]
        held = Product.objects.move_stock(wanted, if_available=True)
        if held != wanted.keys():
            Product.objects.move_stock({sku: -wanted[sku] for sku in held})
            short = ", ".join(f"{sku} insufficient stock" for sku in sorted(wanted.keys() - held))
            reservation = Reservation.objects.create(
                order_id=order_id, status=Reservation.Status.REJECTED, lines=as_json, reason=short
            )
        else:
            reservation = Reservation.objects.create(order_id=order_id, status=Reservation.Status.HELD, lines=as_json)
            _refresh_availability_on_commit(list(wanted))
    outcome = STOCK_OUTCOMES.get(reservation.status)
    return Leg(outcome, reservation.reason) if outcome else None


@transaction.atomic
def stock_commit(*, order_id: UUID, lines: list[tuple[str, int]]) -> None:
    """A confirmed order's held stock leaves the warehouse, once."""
    reservation = Reservation.objects.select_for_update().filter(order_id=order_id).first()
    if reservation is not None and reservation.status == Reservation.Status.COMMITTED:
        return
    if reservation is None or reservation.status != Reservation.Status.HELD:
        raise Refused(f"no stock held for order {order_id}")
    if {line["product_id"]: line["quantity"] for line in reservation.lines} != dict(lines):
        raise Refused(f"order {order_id} was confirmed with other lines than inventory holds")
    _settle(reservation, Reservation.Status.COMMITTED, ship=True)


@transaction.atomic
def stock_release(*, order_id: UUID) -> None:
    """Give back what a cancelled order held, once; a released record stops a reservation still to come."""
    reservation = Reservation.objects.select_for_update().filter(order_id=order_id).first()
    if reservation is None:
        Reservation.objects.create(
            order_id=order_id, status=Reservation.Status.RELEASED, lines=[], reason="cancelled before reservation"
        )
    elif reservation.status == Reservation.Status.HELD:
        _settle(reservation, Reservation.Status.RELEASED, ship=False)


def _settle(reservation: Reservation, status: str, *, ship: bool) -> None:
    Product.objects.move_stock({line["product_id"]: -line["quantity"] for line in reservation.lines}, ship=ship)
    reservation.status = status
    reservation.save(update_fields=["status", "updated_at"])
    _refresh_availability_on_commit([line["product_id"] for line in reservation.lines])


def _refresh_availability_on_commit(skus: list[str]) -> None:
    # The products API reads availability from this cache: the plain saga keeps it as inventory does.
    transaction.on_commit(lambda: availability_refresh(skus=skus))


@transaction.atomic
def payment_authorize(*, order_id: UUID, token: str, amount: Decimal, currency: str) -> Leg | None:
    """Authorize the order's amount with the demo gateway, once per order."""
    payment = Payment.objects.select_for_update().filter(order_id=order_id).first()
    if payment is None:
        key = f"order-{order_id}"
        try:
            authorization = gateway().authorize(idempotency_key=key, token=token, amount=amount, currency=currency)
        except CardDeclined as declined:
            payment = Payment.objects.create(
                order_id=order_id, amount=amount, currency=currency, idempotency_key=key,
                status=Payment.Status.DECLINED, decline_reason=str(declined),
            )  # fmt: skip
        else:
            payment = Payment.objects.create(
                order_id=order_id, amount=amount, currency=currency, idempotency_key=key,
                status=Payment.Status.AUTHORIZED, gateway_reference=authorization.reference,
            )  # fmt: skip
    outcome = PAYMENT_OUTCOMES.get(payment.status)
    return Leg(outcome, payment.decline_reason) if outcome else None


@transaction.atomic
def payment_capture(*, order_id: UUID, amount: Decimal, currency: str) -> None:
    """Capture a confirmed order's authorization, once, for the confirmed total."""
    payment = Payment.objects.select_for_update().filter(order_id=order_id).first()
    if payment is not None and payment.status == Payment.Status.CAPTURED:
        return
    if payment is None or payment.status != Payment.Status.AUTHORIZED:
        raise Refused(f"no live authorization for order {order_id}")
    if (payment.amount, payment.currency) != (amount, currency):
        raise Refused(f"order {order_id} was confirmed for {amount} {currency}, authorized {payment.amount}")
    gateway().capture(reference=payment.gateway_reference, amount=payment.amount)
    payment.status = Payment.Status.CAPTURED
    payment.save(update_fields=["status", "updated_at"])


@transaction.atomic
def payment_void(*, order_id: UUID) -> None:
    """Release a cancelled order's authorization, once; a voided record stops an authorization still to come."""
    payment = Payment.objects.select_for_update().filter(order_id=order_id).first()
    if payment is None:
        Payment.objects.create(
            order_id=order_id, amount=Decimal("0.00"), currency="USD", idempotency_key=f"order-{order_id}",
            status=Payment.Status.VOIDED,
        )  # fmt: skip
    elif payment.status == Payment.Status.AUTHORIZED:
        gateway().void(reference=payment.gateway_reference)
        payment.status = Payment.Status.VOIDED
        payment.save(update_fields=["status", "updated_at"])
