"""Events the inventory service publishes."""

from uuid import UUID

from pydantic import Field

from eventbus.contracts import Currency, EventData, Money, contract


class ReservedLine(EventData):
    product_id: str
    quantity: int = Field(gt=0)


class RejectedLine(EventData):
    product_id: str
    requested: int = Field(gt=0)
    available: int = Field(ge=0)
    reason: str


@contract(producer="inventory", name="StockReserved", version=1, routing_key="inventory.reserved")
class StockReserved(EventData):
    """Every line of the order is held in stock for it."""

    order_id: UUID
    lines: list[ReservedLine] = Field(min_length=1)


@contract(producer="inventory", name="StockRejected", version=1, routing_key="inventory.rejected")
class StockRejected(EventData):
    """The order cannot be reserved; nothing was held. Each line says why."""

    order_id: UUID
    lines: list[RejectedLine] = Field(min_length=1)


@contract(producer="inventory", name="StockReleased", version=1, routing_key="inventory.released")
class StockReleased(EventData):
    """What was held for a cancelled order is available again."""

    order_id: UUID
    lines: list[ReservedLine]


@contract(producer="inventory", name="ProductChanged", version=1, routing_key="inventory.product.changed")
class ProductChanged(EventData):
    """A product was created or its name or price changed (event-carried state for other services'
    catalogues). `revision` grows with each change so that a late, older event is ignored."""

    product_id: str
    name: str
    price: Money
    currency: Currency
    revision: int = Field(ge=1)
