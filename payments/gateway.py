"""The payment gateway interface and the demo gateway (no network).

Demo tokens: `tok_decline` is declined; `tok_flaky` times out on the first two attempts of the
handler that calls it and then succeeds; any other `tok_...` succeeds. Authorizing again with the
same idempotency key returns the same authorization, as real gateways do, so a retried
authorization never charges twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from eventbus.errors import TransientError
from eventbus.handling import delivery_attempt


class CardDeclined(Exception):
    """The card network said no; retrying will not change that."""


class GatewayUnavailable(TransientError):
    """The gateway did not answer in time; the same request with the same idempotency key may succeed."""


@dataclass(frozen=True)
class Authorization:
    reference: str


class Gateway(Protocol):
    def authorize(self, *, idempotency_key: str, token: str, amount: Decimal, currency: str) -> Authorization: ...
    def capture(self, *, reference: str, amount: Decimal) -> None: ...
    def void(self, *, reference: str) -> None: ...


# Demo tokens, documented to every user: not secrets.
DECLINED_TOKEN = "tok_decline"  # noqa: S105
FLAKY_TOKEN = "tok_flaky"  # noqa: S105


class DemoGateway:
    FLAKY_FAILURES = 2

    def authorize(self, *, idempotency_key: str, token: str, amount: Decimal, currency: str) -> Authorization:
        if token == DECLINED_TOKEN:
            raise CardDeclined("card declined")
        # The attempt comes with the task message: no store (such as Redis, whose outage must not
        # decide an order's fate) and no counter in the handler's transaction, which a failure rolls back.
        if token == FLAKY_TOKEN and delivery_attempt() <= self.FLAKY_FAILURES:
            raise GatewayUnavailable("gateway timeout (demo token tok_flaky)")
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
        return Authorization(reference=f"auth_{digest}")

    def capture(self, *, reference: str, amount: Decimal) -> None:
        """The demo network accepts every capture of an authorization it issued."""

    def void(self, *, reference: str) -> None:
        """The demo network accepts every void of an authorization it issued."""


def gateway() -> Gateway:
    return DemoGateway()
