"""Events the orders service publishes: its published language, the only part other services import."""

from datetime import datetime
from uuid import UUID

from pydantic import Field

from eventbus.contracts import Currency, EventData, Money, contract


class OrderItem(EventData):
    product_id: str = Field(min_length=1, max_length=32)
    quantity: int = Field(gt=0)


@contract(producer="orders", name="OrderPlaced", version=1, routing_key="order.placed")
class OrderPlaced(EventData):
    """A customer placed an order. Field names follow the article's example (orderId, items, ...);
    `paymentToken` is the customer's payment token, sealed (encrypted) for the payments service."""

    order_id: UUID
    items: list[OrderItem] = Field(min_length=1)
    total_amount: Money
    currency: Currency
    timestamp: datetime
    payment_token: str = Field(pattern=r"^sealed:")


@contract(producer="orders", name="OrderConfirmed", version=1, routing_key="order.confirmed")
class OrderConfirmed(EventData):
    """Stock is reserved and payment authorized: the order stands."""

    order_id: UUID
    items: list[OrderItem] = Field(min_length=1)
    total_amount: Money
    currency: Currency


@contract(producer="orders", name="OrderCancelled", version=1, routing_key="order.cancelled")
class OrderCancelled(EventData):
    """The order will not be fulfilled; whatever was reserved or authorized for it must be undone."""

    order_id: UUID
    reason: str = Field(min_length=1, max_length=500)
