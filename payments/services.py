"""Payments writes: authorize on a new order, capture on confirmation, void on cancellation."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from django.db import transaction

from eventbus.outbox import publish
from payments import events
from payments.gateway import PaymentDeclined, gateway
from payments.models import Payment


def _idempotency_key(order_id: UUID) -> str:
    return f"order-{order_id}"


@transaction.atomic
def payment_authorize(*, order_id: UUID, token: str, amount: Decimal, currency: str) -> Payment:
    """Authorize the order's amount once; announce PaymentAuthorized or PaymentDeclined.

    A payment already recorded for the order (authorized, declined, or voided because the order
    was cancelled first) is returned untouched: the card is never charged twice."""
    existing = Payment.objects.select_for_update().filter(order_id=order_id).first()
    if existing is not None:
        return existing
    key = _idempotency_key(order_id)
    try:
        authorization = gateway().authorize(idempotency_key=key, token=token, amount=amount, currency=currency)
    except PaymentDeclined as declined:
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


@transaction.atomic
def payment_capture(*, order_id: UUID) -> Payment | None:
    """Capture an authorized payment once the order is confirmed."""
    payment = Payment.objects.select_for_update().filter(order_id=order_id).first()
    if payment is None or payment.status != Payment.Status.AUTHORIZED:
        return payment
    gateway().capture(reference=payment.gateway_reference, amount=payment.amount)
    payment.status = Payment.Status.CAPTURED
    payment.save(update_fields=["status", "updated_at"])
    publish(
        events.PaymentCaptured(
            order_id=order_id, payment_id=payment.id, amount=f"{payment.amount:.2f}", currency=payment.currency
        )
    )
    return payment


@transaction.atomic
def payment_void(*, order_id: UUID) -> Payment:
    """Release an authorization of a cancelled order. If the cancellation arrives first, a voided
    record is left so that a late authorization request does nothing."""
    payment = Payment.objects.select_for_update().filter(order_id=order_id).first()
    if payment is None:
        return Payment.objects.create(
            order_id=order_id, amount=Decimal("0.00"), currency="USD", idempotency_key=_idempotency_key(order_id),
            status=Payment.Status.VOIDED,
        )  # fmt: skip
    if payment.status != Payment.Status.AUTHORIZED:
        return payment
    gateway().void(reference=payment.gateway_reference)
    payment.status = Payment.Status.VOIDED
    payment.save(update_fields=["status", "updated_at"])
    publish(events.PaymentVoided(order_id=order_id, payment_id=payment.id))
    return payment
