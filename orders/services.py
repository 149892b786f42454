"""Orders writes: placing an order, the saga that confirms or cancels it, and the local catalogue."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from eventbus.outbox import publish
from eventbus.preload import locked
from eventbus.transactions import service_transaction
from orders.events import OrderCancelled, OrderConfirmed, OrderItem
from orders.metrics import order_decided
from orders.models import MAX_QUANTITY_PER_LINE, CatalogProduct, Order, OrderLine
from orders.saga import record_leg
from orders.signals import order_placed

TIMEOUT = "timeout"
PAYMENT_TOKEN = re.compile(r"^tok_[A-Za-z0-9_]{1,64}$")
MAX_LINES = 100
MAX_TOTAL = Decimal("999999999999.99")  # Order.total_amount and the events' Money hold 12 digits before the point
# How far past the catalogue's revision of a product a change may be: more changes of one product
# than this are never in flight at once (see catalog_product_apply).
MAX_REVISION_JUMP = 10
# What the saga changes on an order; the rest (who ordered what, for how much) is fixed when it is placed.
SAGA_FIELDS = [
    "status", "cancel_reason", "decided_at", "stock_leg", "stock_reason", "payment_leg", "payment_reason", "updated_at"
]  # fmt: skip


class ImplausibleRevision(ValueError):
    """A product change too far ahead of the catalogue's copy to be one of the changes still in flight."""


class OrderRejected(ValueError):
    """The order cannot be placed as given; `errors` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{field}: {', '.join(msgs)}" for field, msgs in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class LineRequest:
    product_id: str
    quantity: int


@dataclass(frozen=True)
class PricedOrder:
    quantities: dict[str, int]
    prices: dict[str, CatalogProduct]
    currency: str

    @property
    def total(self) -> Decimal:
        return sum((self.prices[sku].price * qty for sku, qty in self.quantities.items()), Decimal("0.00"))


def order_check(*, items: list[LineRequest]) -> PricedOrder:
    """Merge repeated products and price the lines from the catalogue; raise OrderRejected naming
    every problem. The admin's form runs this too, so both entry points reject the same input."""
    if not items:
        raise OrderRejected({"items": ["An order needs at least one item."]})
    if len(items) > MAX_LINES:
        raise OrderRejected({"items": [f"At most {MAX_LINES} lines per order."]})
    quantities: dict[str, int] = {}
    for item in items:
        quantities[item.product_id] = quantities.get(item.product_id, 0) + item.quantity
    prices = CatalogProduct.objects.in_bulk(list(quantities))
    errors = []
    for sku, quantity in quantities.items():
        if sku not in prices:
            errors.append(f"Unknown product {sku!r}.")
        if not 0 < quantity <= MAX_QUANTITY_PER_LINE:
            errors.append(f"Quantity of {sku!r} must be between 1 and {MAX_QUANTITY_PER_LINE}.")
    currencies = {product.currency for product in prices.values()}
    if len(currencies) > 1:
        errors.append("All products of an order must share one currency.")
    if errors:
        raise OrderRejected({"items": errors})
    priced = PricedOrder(quantities, prices, currencies.pop())
    if priced.total > MAX_TOTAL:
        raise OrderRejected({"items": [f"The order total exceeds {MAX_TOTAL} {priced.currency}."]})
    return priced


def order_build(*, customer_email: str, payment_token: str, items: list[LineRequest]) -> tuple[Order, list[OrderLine]]:
    """A pending order and its lines, checked and priced from the catalogue, not saved yet; raise OrderRejected.
    Built before the transaction that saves them, which then only writes: on SQLite every writer waits for it.
    The catalogue is a copy that other services' events update anyway; a price read a moment early is as good."""
    if not PAYMENT_TOKEN.match(payment_token):
        raise OrderRejected({"payment_token": ["Expected a payment token like 'tok_visa'."]})
    priced = order_check(items=items)
    order = Order(customer_email=customer_email, total_amount=priced.total, currency=priced.currency)
    lines = [
        OrderLine(order=order, product_id=sku, quantity=qty, unit_price=priced.prices[sku].price)
        for sku, qty in priced.quantities.items()
    ]
    return order, lines


def order_place(*, customer_email: str, payment_token: str, items: list[LineRequest]) -> Order:
    """Create a pending order priced from the catalogue and announce it (OrderPlaced), all in one transaction."""
    order, lines = order_build(customer_email=customer_email, payment_token=payment_token, items=items)
    with transaction.atomic():
        order.save(force_insert=True)
        OrderLine.objects.bulk_create(lines)
        order_placed.send(sender=Order, order=order, lines=lines, payment_token=payment_token)
    return order


@service_transaction
def catalog_product_apply(*, sku: str, name: str, price: Decimal, currency: str, revision: int) -> bool:
    """Apply a product change if it is newer than the catalogue's copy; return whether it applied.

    A change carries the whole product, so the newest revision wins and none needs waiting for: an
    older or repeated one is ignored, and a newer one applies even over a gap (the revisions in the
    gap, arriving late, are then older). A product never seen counts as revision 0. A revision more
    than MAX_REVISION_JUMP ahead cannot be a change in flight, and applying it would hide every real
    change below it: it is refused with ImplausibleRevision, and the catalogue keeps its copy."""
    product, _ = CatalogProduct.objects.select_for_update().get_or_create(
        sku=sku, defaults={"name": name, "price": price, "currency": currency, "revision": 0}
    )  # a row created here goes with the transaction if the change is refused
    if revision <= product.revision:
        return False
    if revision > product.revision + MAX_REVISION_JUMP:
        raise ImplausibleRevision(
            f"product {sku} revision {revision} refused: the catalogue has revision {product.revision}, "
            f"and no more than {MAX_REVISION_JUMP} changes of a product are ever in flight"
        )
    product.name, product.price, product.currency, product.revision = name, price, currency, revision
    product.save()
    return True


@service_transaction
def order_record_leg(
    *, order_id: UUID, stock: str | None = None, payment: str | None = None, reason: str = ""
) -> Order | None:
    """Record one leg's outcome and let the saga decide. A leg is recorded once: a repeated or
    late event changes nothing, so any order and any duplication of events ends the same way."""
    order = locked(Order, pk=order_id)
    if order is not None:
        _record(order, stock=stock, payment=payment, reason=reason)
    return order


@service_transaction
def order_record_authorization(*, order_id: UUID, amount: Decimal, currency: str) -> Order | None:
    """Record an authorization as the payment leg: authorized if it holds exactly the order's total in
    the order's currency, failed (declined, naming both amounts) otherwise.

    A payments team treats an authorization for another amount as it treats a partial approval it
    does not accept: it reverses it at once and the sale does not go through. So the order is
    cancelled, and its cancellation voids the authorization and releases the stock. Confirming
    would capture money that does not pay for the order; leaving it pending would hold the
    customer's funds and the stock until the timeout and hide the cause behind `timeout`. A forged
    authorization gains nothing by it that a forged PaymentDeclined would not."""
    order = locked(Order, pk=order_id)
    if order is None:
        return None
    if (amount, currency) == (order.total_amount, order.currency):
        _record(order, payment=Order.PaymentLeg.AUTHORIZED)
    else:
        mismatch = f"authorized {amount:.2f} {currency}, but the order totals {order.total_amount:.2f} {order.currency}"
        _record(order, payment=Order.PaymentLeg.DECLINED, reason=mismatch)
    return order


def _record(order: Order, *, stock: str | None = None, payment: str | None = None, reason: str = "") -> None:
    decision = record_leg(order, stock=stock, payment=payment, reason=reason)
    if decision is not None and order.status == Order.Status.PENDING:
        _decide(order, decision.status, decision.reason)
    elif decision is not None and order.status == Order.Status.CANCELLED and order.cancel_reason != TIMEOUT:
        order.cancel_reason = decision.reason  # a second failed leg joins the reason
    order.save(update_fields=SAGA_FIELDS)


def _decide(order: Order, status: str, reason: str = "") -> None:
    order.status, order.cancel_reason, order.decided_at = status, reason, timezone.now()
    order_decided(order)
    if status == Order.Status.CONFIRMED:
        lines = list(order.lines.all())
        publish(
            OrderConfirmed(
                order_id=order.id,
                items=[OrderItem(product_id=line.product_id, quantity=line.quantity) for line in lines],
                total_amount=f"{order.total_amount:.2f}",
                currency=order.currency,
            ),
            correlation_id=str(order.id),
        )
    else:
        publish(OrderCancelled(order_id=order.id, reason=reason), correlation_id=str(order.id))


def order_cancel_stale(*, older_than: timedelta) -> int:
    """Cancel (reason `timeout`, with compensation) every order still pending after `older_than`."""
    cancelled = 0
    stale = Order.objects.filter(status=Order.Status.PENDING, created_at__lt=timezone.now() - older_than)
    for order_id in stale.values_list("id", flat=True):
        with transaction.atomic():
            order = Order.objects.select_for_update().get(pk=order_id)
            if order.status == Order.Status.PENDING:
                _decide(order, Order.Status.CANCELLED, TIMEOUT)
                order.save(update_fields=SAGA_FIELDS)
                cancelled += 1
    return cancelled
