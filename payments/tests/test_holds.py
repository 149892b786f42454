"""An authorization for an order that is never decided expires; a capture takes only what was authorized for it."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from eventbus.errors import PermanentError
from eventbus.models import OutboxMessage
from orderproj.celery import app
from orders.events import OrderConfirmed, OrderItem
from payments.models import Payment
from payments.services import payment_authorize, payment_expire_stale, payment_void
from payments.tasks import void_stale_authorizations
from tests import factories
from tests.delivery import deliver

pytestmark = pytest.mark.django_db


def age(order_id: uuid.UUID, *, seconds: int) -> None:
    Payment.objects.filter(order_id=order_id).update(created_at=timezone.now() - timedelta(seconds=seconds))


def authorize(order_id: uuid.UUID, amount: str = "20.00") -> Payment:
    return payment_authorize(order_id=order_id, token="tok_visa", amount=Decimal(amount), currency="USD")


def test_an_authorization_for_an_order_that_does_not_exist_is_voided_when_the_hold_expires(settings):
    settings.HOLD_EXPIRY_SECONDS = 600
    # Given the forged OrderPlaced of issue 10 (no such order) authorizing 99 999.00, and a live order's authorization
    forged = factories.order_placed(total="99999.00")
    live = factories.order_placed(total="20.00")
    deliver("payments.authorize_payment", forged, task_id="forged")
    deliver("payments.authorize_payment", live, task_id="live")
    age(forged.order_id, seconds=601)
    age(live.order_id, seconds=599)

    # When beat's task runs, twice
    assert void_stale_authorizations() == 1
    assert void_stale_authorizations() == 0

    # Then the forged authorization is voided once, announced as usual, and the live one stays
    statuses = dict(Payment.objects.values_list("order_id", "status"))
    assert statuses == {forged.order_id: Payment.Status.EXPIRED, live.order_id: Payment.Status.AUTHORIZED}
    voided = OutboxMessage.objects.get(event_type="payments.PaymentVoided.v1")
    assert voided.correlation_id == str(forged.order_id)
    assert voided.body["data"]["orderId"] == str(forged.order_id)


def test_beat_runs_the_expiry_on_the_payments_queue():
    scheduled = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert void_stale_authorizations.name in scheduled
    assert app.amqp.router.route({}, void_stale_authorizations.name)["queue"].name == "payments.tasks"


def confirmed(order_id: uuid.UUID, total: str = "20.00", currency: str = "USD") -> OrderConfirmed:
    items = [OrderItem(product_id="P001", quantity=2)]
    return OrderConfirmed(order_id=order_id, items=items, total_amount=total, currency=currency)


def test_a_confirmation_captures_the_authorized_amount_once():
    order_id = uuid.uuid4()
    authorize(order_id)
    deliver("payments.capture_payment", confirmed(order_id), task_id="first")
    deliver("payments.capture_payment", confirmed(order_id), task_id="again")  # a second event
    assert Payment.objects.get(order_id=order_id).status == Payment.Status.CAPTURED
    assert OutboxMessage.objects.filter(event_type="payments.PaymentCaptured.v1").count() == 1


def _never_authorized(order_id: uuid.UUID) -> None:
    pass


def _voided(order_id: uuid.UUID) -> None:
    authorize(order_id)
    payment_void(order_id=order_id)


def _expired(order_id: uuid.UUID) -> None:
    authorize(order_id)
    age(order_id, seconds=3600)
    payment_expire_stale(older_than=timedelta(minutes=10))


def _underpaid(order_id: uuid.UUID) -> None:
    authorize(order_id, "0.01")


@pytest.mark.parametrize(
    ("given", "confirmation", "refusal"),
    [
        (_never_authorized, {}, "no authorization"),
        (_voided, {}, "is voided"),
        (_expired, {}, "is expired"),
        (_underpaid, {}, "authorized 0.01 USD"),
        (authorize, {"total": "99999.00"}, "confirmed for 99999.00 USD"),
        (authorize, {"currency": "EUR"}, "confirmed for 20.00 EUR"),
    ],
    ids=["never authorized", "voided", "expired", "underpaid", "other total", "other currency"],
)
def test_a_confirmation_the_authorization_does_not_cover_is_refused(given, confirmation, refusal):
    """Issue 10: a forged OrderConfirmed reached payments. What payments can check on its own is that
    it holds an authorization for the order, of exactly the confirmed total."""
    order_id = uuid.uuid4()
    given(order_id)
    before = Payment.objects.filter(order_id=order_id).values_list("status", flat=True).first()

    with pytest.raises(PermanentError, match=refusal):
        deliver("payments.capture_payment", confirmed(order_id, **confirmation))

    assert Payment.objects.filter(order_id=order_id).values_list("status", flat=True).first() == before
    assert not OutboxMessage.objects.filter(event_type="payments.PaymentCaptured.v1").exists()
