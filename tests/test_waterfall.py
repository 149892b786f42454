"""Orders' waterfalls from real processes: every hop of every handling recorded, the delivery included, through
batch tasks and through retries (the receipt travels in the task message's headers)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction

from orders.selectors import order_waterfall
from tests import factories
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ORDERS = 24
HANDLINGS = 6  # reserve, authorize, two saga legs, commit, capture


def test_every_hop_of_a_burst_of_orders_is_recorded_through_batches_and_retries(workers):
    # Given orders committed at once (their events reach the workers together), the last paid with the token
    # that fails twice before it succeeds
    factories.product("P001", stock=1000)
    tokens = ["tok_visa"] * (ORDERS - 1) + ["tok_flaky"]
    with transaction.atomic():
        ids = [
            factories.order(("P001", 1), token=token, email=f"w{i}@example.com").id for i, token in enumerate(tokens)
        ]

    # When every order's waterfall is complete
    def complete():
        falls = [order_waterfall(order_id=order_id) for order_id in ids]
        return falls if all(fall.complete for fall in falls) else None

    falls = wait_for(complete, timeout=90, what=f"{ORDERS} orders' every hop handled")

    # Then each handling has its three hops recorded, in order: delivered, started, handled
    lanes = [lane for fall in falls for lane in fall.lanes if lane.handler]
    assert len(lanes) == ORDERS * HANDLINGS
    for lane in lanes:
        delivered, started, handled = (hop.at for hop in lane.hops)
        assert delivered and started and handled, (lane.handler, lane.event_id, lane.hops)
        assert delivered <= started <= handled
    # And the events that went in batch tasks kept their receipts too
    assert any(lane.batched for lane in lanes), "no events arrived together"
    # And the flaky payment's delivery is its first receipt: the queued stretch holds two failed tries and their
    # backoff (at least one second, then two)
    flaky = next(lane for lane in falls[-1].lanes if lane.handler == "payments.authorize_payment")
    assert flaky.attempt == 3 and flaky.hops[1].took >= timedelta(seconds=1)
