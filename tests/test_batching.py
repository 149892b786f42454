"""Events that arrive together are handled in batch tasks, end to end: real RabbitMQ, worker and relay processes,
a real database. Each event keeps its own inbox row, retries and outcome."""

from __future__ import annotations

import json

import pytest
from django.db import transaction
from django_celery_results.models import TaskResult

from eventbus.models import InboxMessage
from eventbus.selectors import timeline
from orders.models import Order
from payments.models import Payment
from tests import factories
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
ORDERS = 40


def test_a_burst_of_orders_is_handled_in_batches_each_event_once(workers):
    # Given 40 orders committed at once (their OrderPlaced events reach the workers together), one of them
    # paid with the token that fails twice before it succeeds
    factories.product("P001", stock=1000)
    tokens = ["tok_visa"] * (ORDERS - 1) + ["tok_flaky"]
    with transaction.atomic():
        orders = [
            factories.order(("P001", 1), token=token, email=f"b{i}@example.com") for i, token in enumerate(tokens)
        ]
    ids = [order.id for order in orders]

    # Then every one is confirmed, paid and its stock taken, the flaky one included ...
    inbox = InboxMessage.objects.filter(correlation_id__in=[str(i) for i in ids])

    def settled():
        confirmed = Order.objects.filter(id__in=ids, status=Order.Status.CONFIRMED).count()
        captured = Payment.objects.filter(order_id__in=ids, status=Payment.Status.CAPTURED).count()
        committed = inbox.filter(handler="inventory.commit_stock").count()
        return confirmed == captured == committed == ORDERS

    wait_for(settled, timeout=90, what=f"{ORDERS} orders confirmed, captured and their stock committed")

    # ... some of their events went in batch tasks, whose results list what each handler did ...
    batches = [json.loads(r.result) for r in TaskResult.objects.filter(task_name__endswith=".handle_batch")]
    batched = [event for batch in batches if "events" in batch for event in batch["events"]]
    assert any(len(batch.get("events", [])) > 1 for batch in batches), "no events arrived together"
    assert all(set(event["handlers"].values()) <= {"done", "duplicate", "retrying"} for event in batched)

    # ... and each handler handled each event once: one inbox row per (handler, event)
    pairs = list(inbox.values_list("handler", "event_id"))
    assert len(pairs) == len(set(pairs)) == ORDERS * 6  # reserve, authorize, two saga legs, commit, capture

    # The flaky payment failed in its batch (if it was in one) without failing its neighbours, and went on
    # alone: its handler's own task succeeded on the third attempt.
    flaky = str(ids[-1])
    runs = {run.handler: run for entry in timeline(flaky) for run in entry.handlers}
    assert runs["payments.authorize_payment"].attempt == 3 and runs["payments.authorize_payment"].outcome == "done"
    # A batched event's timeline points at the batch task that handled it, with its own outcome.
    batch_ids = set(TaskResult.objects.filter(task_name__endswith=".handle_batch").values_list("task_id", flat=True))
    shown = [run for order_id in ids[:-1] for entry in timeline(str(order_id)) for run in entry.handlers]
    in_batches = [run for run in shown if run.task_id in batch_ids]
    assert in_batches and all(run.state == "SUCCESS" and run.outcome == "done" for run in in_batches)
