"""The orders service's subscriptions: the saga's two legs, and its copy of the catalogue."""

from decimal import Decimal

from eventbus.envelope import CloudEvent
from eventbus.errors import PermanentError
from eventbus.subscriptions import Preload, Subscriber
from inventory.events import ProductChanged, StockRejected, StockReserved
from orders.models import Order
from orders.services import ImplausibleRevision, catalog_product_apply, order_record_authorization, order_record_leg
from payments.events import PaymentAuthorized, PaymentDeclined

# Not the default `orders.events` (eventbus.names): DESIGN fixed this queue's name.
orders = Subscriber("orders", queue="orders.events-in", preload=(Preload(Order),))


@orders.on(StockReserved)
def stock_reserved(data: StockReserved, event: CloudEvent) -> None:
    order_record_leg(order_id=data.order_id, stock=Order.StockLeg.RESERVED)


@orders.on(StockRejected)
def stock_rejected(data: StockRejected, event: CloudEvent) -> None:
    reason = ", ".join(
        f"{line.product_id} {line.reason} (requested {line.requested}, available {line.available})"
        for line in data.lines
    )
    order_record_leg(order_id=data.order_id, stock=Order.StockLeg.REJECTED, reason=reason)


@orders.on(PaymentAuthorized)
def payment_authorized(data: PaymentAuthorized, event: CloudEvent) -> None:
    order_record_authorization(order_id=data.order_id, amount=Decimal(data.amount), currency=data.currency)


@orders.on(PaymentDeclined)
def payment_declined(data: PaymentDeclined, event: CloudEvent) -> None:
    order_record_leg(order_id=data.order_id, payment=Order.PaymentLeg.DECLINED, reason=data.reason)


@orders.on(ProductChanged)
def update_catalog(data: ProductChanged, event: CloudEvent) -> None:
    try:
        catalog_product_apply(
            sku=data.product_id,
            name=data.name,
            price=Decimal(data.price),
            currency=data.currency,
            revision=data.revision,
        )
    except ImplausibleRevision as refused:
        raise PermanentError(str(refused)) from None
