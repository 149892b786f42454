"""The order saga's decision: a pure function of the two legs' outcomes, whatever order they came in."""

from __future__ import annotations

from dataclasses import dataclass

from orders.models import Order

Stock, Payment = Order.StockLeg, Order.PaymentLeg


@dataclass(frozen=True)
class Decision:
    status: str
    reason: str = ""


def decide(*, stock: str, stock_reason: str, payment: str, payment_reason: str) -> Decision | None:
    """Confirm when both legs succeeded; cancel as soon as one failed (naming every failed leg, stock
    first, so the reason is the same in any arrival order); otherwise wait."""
    failures = []
    if stock == Stock.REJECTED:
        failures.append(f"stock: {stock_reason}")
    if payment == Payment.DECLINED:
        failures.append(f"payment: {payment_reason}")
    if failures:
        return Decision(Order.Status.CANCELLED, "; ".join(failures))
    if stock == Stock.RESERVED and payment == Payment.AUTHORIZED:
        return Decision(Order.Status.CONFIRMED)
    return None


def record_leg(
    order: Order, *, stock: str | None = None, payment: str | None = None, reason: str = ""
) -> Decision | None:
    """Note a leg's outcome on `order` (not saved) unless that leg is known already (a duplicate or a late
    one changes nothing), and return what the saga decides from both legs now; None: wait."""
    if stock and order.stock_leg == Stock.PENDING:
        order.stock_leg, order.stock_reason = stock, reason
    if payment and order.payment_leg == Payment.PENDING:
        order.payment_leg, order.payment_reason = payment, reason
    return decide(
        stock=order.stock_leg, stock_reason=order.stock_reason,
        payment=order.payment_leg, payment_reason=order.payment_reason,
    )  # fmt: skip
