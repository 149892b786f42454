"""Payments writes: authorize on a new order, capture on confirmation, void on cancellation."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from eventbus.outbox import publish
from eventbus.preload import locked
from eventbus.transactions import service_transaction
from payments import events
from payments.gateway import CardDeclined, gateway
from payments.models import Payment


class CaptureRefused(Exception):
    """A confirmation payments cannot honour: no live authorization for the order, or one of another amount."""


def _idempotency_key(order_id: UUID) -> str:
    return f"order-{order_id}"


@service_transaction
def payment_authorize(*, order_id: UUID, token: str, amount: Decimal, currency: str) -> Payment:
    """Authorize the order's amount once; announce PaymentAuthorized or PaymentDeclined.

    A payment already recorded for the order (authorized, declined, or voided because the order
    was cancelled first) is returned untouched: the card is never charged twice."""
    existing = locked(Payment, order_id=order_id)
    if existing is not None:
        return existing
    key = _idempotency_key(order_id)
    try:
        authorization = gateway().authorize(idempotency_key=key, token=token, amount=amount, currency=currency)
    except CardDeclined as declined:
        payment = Payment.objects.create(
            order_id=order_id, amount=amount, currency=currency, idempotency_key=key,
            status=Payment.Status.DECLINED, decline_reason=str(declined),
        )  # fmt: skip
        publish(events.PaymentDeclined(order_id=order_id, reason=str(declined)))
        return payment
    payment = Payment.objects.create(
        order_id=order_id, amount=amount, currency=currency, idempotency_key=key,
        status=Payment.Status.AUTHORIZED, gateway_reference=authorization.reference,
    )  # fmt: skip
    publish(
        events.PaymentAuthorized(order_id=order_id, payment_id=payment.id, amount=f"{amount:.2f}", currency=currency)
    )
    return payment


@service_transaction
def payment_capture(*, order_id: UUID, amount: Decimal, currency: str) -> Payment:
    """Capture the authorization of a confirmed order (once), for the confirmed total.

    Payments cannot see the order, so it checks what it can on its own: that it holds a live
    authorization for the order, of exactly the confirmed amount; otherwise it refuses
    (CaptureRefused), also when the authorization has expired."""
    payment = locked(Payment, order_id=order_id)
    if payment is not None and payment.status == Payment.Status.CAPTURED:
        return payment
    if payment is None:
        raise CaptureRefused(f"payments holds no authorization for order {order_id}")
    if payment.status != Payment.Status.AUTHORIZED:
        raise CaptureRefused(f"the payment of order {order_id} is {payment.status}, not authorized")
    if (payment.amount, payment.currency) != (amount, currency):
        raise CaptureRefused(
            f"order {order_id} was confirmed for {amount:.2f} {currency}, "
            f"but authorized {payment.amount:.2f} {payment.currency}"
        )
    gateway().capture(reference=payment.gateway_reference, amount=payment.amount)
    payment.status = Payment.Status.CAPTURED
    payment.save(update_fields=["status", "updated_at"])
    publish(
        events.PaymentCaptured(
            order_id=order_id, payment_id=payment.id, amount=f"{payment.amount:.2f}", currency=payment.currency
        )
    )
    return payment


@service_transaction
def payment_void(*, order_id: UUID) -> Payment:
    """Release an authorization of a cancelled order. If the cancellation arrives first, a voided
    record is left so that a late authorization request does nothing."""
    payment = locked(Payment, order_id=order_id)
    if payment is None:
        return Payment.objects.create(
            order_id=order_id, amount=Decimal("0.00"), currency="USD", idempotency_key=_idempotency_key(order_id),
            status=Payment.Status.VOIDED,
        )  # fmt: skip
    if payment.status == Payment.Status.AUTHORIZED:
        _void(payment, Payment.Status.VOIDED)
    return payment


def payment_expire_stale(*, older_than: timedelta) -> int:
    """Void every authorization held longer than `older_than`, announcing PaymentVoided; return how many.

    Its order was never decided: the order does not exist (a forged OrderPlaced), or its decision was
    lost. A confirmation arriving after this is refused (see payment_capture)."""
    expired = 0
    stale = Payment.objects.filter(status=Payment.Status.AUTHORIZED, created_at__lt=timezone.now() - older_than)
    for payment_id in stale.values_list("id", flat=True):
        with transaction.atomic():
            payment = Payment.objects.select_for_update().get(pk=payment_id)
            if payment.status == Payment.Status.AUTHORIZED:
                _void(payment, Payment.Status.EXPIRED)
                expired += 1
    return expired


def _void(payment: Payment, status: str) -> None:
    gateway().void(reference=payment.gateway_reference)
    payment.status = status
    payment.save(update_fields=["status", "updated_at"])
    publish(
        events.PaymentVoided(order_id=payment.order_id, payment_id=payment.id), correlation_id=str(payment.order_id)
    )
