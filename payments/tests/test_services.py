"""Payments: authorize once per order, the demo gateway's tokens, capture and void."""

import uuid
from decimal import Decimal

import pytest

from eventbus.models import OutboxMessage
from payments.models import Payment
from payments.services import payment_authorize, payment_capture, payment_void

pytestmark = pytest.mark.django_db


def authorize(order_id, token="tok_visa"):
    return payment_authorize(order_id=order_id, token=token, amount=Decimal("20.00"), currency="USD")


def test_authorizing_twice_charges_once():
    order_id = uuid.uuid4()
    first, second = authorize(order_id), authorize(order_id)
    assert first.pk == second.pk and first.status == Payment.Status.AUTHORIZED
    assert OutboxMessage.objects.filter(event_type="payments.PaymentAuthorized.v1").count() == 1


def test_tok_decline_is_declined_without_retry():
    payment = authorize(uuid.uuid4(), "tok_decline")
    assert payment.status == Payment.Status.DECLINED and payment.decline_reason == "card declined"
    assert OutboxMessage.objects.filter(event_type="payments.PaymentDeclined.v1").count() == 1


def test_capture_after_confirmation_and_void_after_cancellation_happen_once():
    confirmed, cancelled = uuid.uuid4(), uuid.uuid4()
    authorize(confirmed)
    authorize(cancelled)
    for _ in range(2):
        payment_capture(order_id=confirmed, amount=Decimal("20.00"), currency="USD")
        payment_void(order_id=cancelled)
    assert Payment.objects.get(order_id=confirmed).status == Payment.Status.CAPTURED
    assert Payment.objects.get(order_id=cancelled).status == Payment.Status.VOIDED
    types = list(OutboxMessage.objects.values_list("event_type", flat=True))
    assert types.count("payments.PaymentCaptured.v1") == 1 and types.count("payments.PaymentVoided.v1") == 1


def test_a_cancellation_that_arrives_before_the_authorization_prevents_it():
    order_id = uuid.uuid4()
    payment_void(order_id=order_id)
    assert authorize(order_id).status == Payment.Status.VOIDED
    assert not OutboxMessage.objects.filter(event_type="payments.PaymentAuthorized.v1").exists()
