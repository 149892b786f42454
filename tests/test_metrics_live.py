"""/metrics adds up what every process of the pipeline observed: the web process serves figures that the relay and
each worker's pool processes recorded, through the directory they share (PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import pytest

from eventbus import metrics
from eventbus.tests.scrape import scrape
from orders.models import Order
from payments.models import Payment
from tests import factories
from tests.harness import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not metrics.DIRECTORY,
        reason="needs PROMETHEUS_MULTIPROC_DIR shared with the workers: run under make test (devstack test)",
    ),
]
DURATION = "orderpipe_handler_duration_seconds_count"


def test_an_order_shows_in_metrics_observed_by_the_relay_and_every_worker(workers, client, settings):
    # Given the totals so far
    factories.product("P301", stock=10)
    before = scrape(client, settings)

    # When an order goes through: placed, reserved, authorized, confirmed, captured
    order = factories.order(("P301", 1), email="m@example.com")

    paid = Payment.objects.filter(order_id=order.pk, status=Payment.Status.CAPTURED)
    wait_for(paid.exists, timeout=60, what="the order's payment to be captured")
    capture = {"handler": "payments.capture_payment", "outcome": "done"}

    def capture_scraped():
        # The capture's run is observed just after its transaction commits.
        samples = scrape(client, settings)
        return samples if samples(DURATION, **capture) > before(DURATION, **capture) else None

    after = wait_for(capture_scraped, timeout=10, what="the capture's run in /metrics")

    # Then the web process's /metrics has what the relay and the three workers observed
    assert Order.objects.get(pk=order.pk).status == Order.Status.CONFIRMED
    for handler in ("inventory.reserve_stock", "payments.authorize_payment", "orders.payment_authorized"):
        assert after(DURATION, handler=handler, outcome="done") > before(DURATION, handler=handler, outcome="done")
    decided = "orderpipe_order_decision_seconds_count"
    assert after(decided, status="confirmed") > before(decided, status="confirmed")
    published = "orderpipe_event_publish_age_seconds_count"
    for producer, events in (("orders", 2), ("inventory", 1), ("payments", 1)):  # placed and confirmed; reserved; ...
        assert after(published, producer=producer) >= before(published, producer=producer) + events, producer
