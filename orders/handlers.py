"""The orders service's subscriptions: its catalogue copy now; the saga's legs join in the saga issue."""

from decimal import Decimal

from eventbus.envelope import CloudEvent
from eventbus.subscriptions import Subscriber
from inventory.events import ProductChanged
from orders.services import catalog_product_apply

orders = Subscriber("orders", queue="orders.events-in")


@orders.on(ProductChanged)
def update_catalog(data: ProductChanged, event: CloudEvent) -> None:
    catalog_product_apply(
        sku=data.product_id, name=data.name, price=Decimal(data.price), currency=data.currency, revision=data.revision
    )
