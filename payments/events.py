"""Events the payments service publishes."""

from uuid import UUID

from pydantic import Field

from eventbus.contracts import Currency, EventData, Money, contract


@contract(producer="payments", name="PaymentAuthorized", version=1, routing_key="payment.authorized")
class PaymentAuthorized(EventData):
    """The amount is held on the customer's card; it is captured on confirmation or voided on cancel."""

    order_id: UUID
    payment_id: UUID
    amount: Money
    currency: Currency


@contract(producer="payments", name="PaymentDeclined", version=1, routing_key="payment.declined")
class PaymentDeclined(EventData):
    """The gateway refused the payment; nothing is held."""

    order_id: UUID
    reason: str = Field(min_length=1)


@contract(producer="payments", name="PaymentCaptured", version=1, routing_key="payment.captured")
class PaymentCaptured(EventData):
    order_id: UUID
    payment_id: UUID
    amount: Money
    currency: Currency


@contract(producer="payments", name="PaymentVoided", version=1, routing_key="payment.voided")
class PaymentVoided(EventData):
    order_id: UUID
    payment_id: UUID
