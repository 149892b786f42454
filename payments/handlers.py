"""Payments' subscriptions: authorize new orders, capture confirmed ones, void cancelled ones."""

from decimal import Decimal

from eventbus.envelope import CloudEvent
from eventbus.errors import PermanentError
from eventbus.sealing import SealBroken, unseal
from eventbus.subscriptions import Preload, Subscriber
from orders.events import OrderCancelled, OrderConfirmed, OrderPlaced
from payments.models import Payment
from payments.services import CaptureRefused, payment_authorize, payment_capture, payment_void

payments = Subscriber("payments", preload=(Preload(Payment, "order_id"),))


@payments.on(OrderPlaced)
def authorize_payment(data: OrderPlaced, event: CloudEvent) -> None:
    try:
        token = unseal(data.payment_token)
    except SealBroken as error:
        raise PermanentError(f"payment token of order {data.order_id}: {error}") from None
    payment_authorize(order_id=data.order_id, token=token, amount=Decimal(data.total_amount), currency=data.currency)


@payments.on(OrderConfirmed)
def capture_payment(data: OrderConfirmed, event: CloudEvent) -> None:
    try:
        payment_capture(order_id=data.order_id, amount=Decimal(data.total_amount), currency=data.currency)
    except CaptureRefused as refused:
        raise PermanentError(str(refused)) from None


@payments.on(OrderCancelled)
def void_payment(data: OrderCancelled, event: CloudEvent) -> None:
    payment_void(order_id=data.order_id)
