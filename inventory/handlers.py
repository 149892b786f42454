"""Inventory's subscriptions: hold stock for new orders, ship it on confirmation, release it on cancel."""

from eventbus.envelope import CloudEvent
from eventbus.errors import PermanentError
from eventbus.subscriptions import Preload, Subscriber
from inventory.models import Reservation
from inventory.services import CommitRefused, stock_commit, stock_release, stock_reserve
from orders.events import OrderCancelled, OrderConfirmed, OrderPlaced

inventory = Subscriber("inventory", preload=(Preload(Reservation, "order_id"),))


@inventory.on(OrderPlaced)
def reserve_stock(data: OrderPlaced, event: CloudEvent) -> None:
    stock_reserve(order_id=data.order_id, lines=[(item.product_id, item.quantity) for item in data.items])


@inventory.on(OrderConfirmed)
def commit_stock(data: OrderConfirmed, event: CloudEvent) -> None:
    try:
        stock_commit(order_id=data.order_id, lines=[(item.product_id, item.quantity) for item in data.items])
    except CommitRefused as refused:
        raise PermanentError(str(refused)) from None


@inventory.on(OrderCancelled)
def release_stock(data: OrderCancelled, event: CloudEvent) -> None:
    stock_release(order_id=data.order_id)
