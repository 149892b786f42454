"""Receivers of the orders service's own signals."""

from django.dispatch import receiver

from eventbus.outbox import publish
from eventbus.sealing import seal
from orders.events import OrderItem, OrderPlaced
from orders.models import Order, OrderLine
from orders.signals import order_placed


@receiver(order_placed, dispatch_uid="orders.publish_order_placed")
def publish_order_placed(sender: type, order: Order, lines: list[OrderLine], payment_token: str, **_: object) -> None:
    """Record OrderPlaced in the outbox, in the same transaction as the order; the token travels sealed."""
    publish(
        OrderPlaced(
            order_id=order.id,
            items=[OrderItem(product_id=line.product_id, quantity=line.quantity) for line in lines],
            total_amount=f"{order.total_amount:.2f}",
            currency=order.currency,
            timestamp=order.created_at,
            payment_token=seal(payment_token),
        ),
        correlation_id=str(order.id),
    )
