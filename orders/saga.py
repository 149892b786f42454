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
