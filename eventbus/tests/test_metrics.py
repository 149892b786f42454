"""The pipeline's metrics in /metrics: handler runs by outcome, retries, duplicates, dead letters by reason and the
age of events when published, observed by calling handling and the relay directly (no worker), then scraped."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from celery.exceptions import Reject, Retry
from django.db import DatabaseError, transaction
from django.utils import timezone

from eventbus import deadletters
from eventbus.errors import PermanentError, TransientError
from eventbus.handling import run_batch, run_handler
from eventbus.models import DeadLetter, OutboxMessage
from eventbus.outbox import publish
from eventbus.relay import publish_rows
from eventbus.subscriptions import Handler
from eventbus.tests.scrape import scrape
from eventbus.tests.stand_ins import FakeTask, inventory_with, reserve_stock_doing
from tests import factories

pytestmark = pytest.mark.django_db
DURATION = "orderpipe_handler_duration_seconds_count"


def handler_doing(function) -> Handler:
    """inventory's reserve_stock as `function`, under a name of its own: workers running beside this test
    observe the real handlers, never this one."""
    return reserve_stock_doing(function, name=f"metrics-test.{uuid.uuid4().hex[:8]}")


def test_a_handler_run_is_timed_by_its_outcome_and_a_duplicate_is_counted(client, settings):
    handler = handler_doing(lambda data, event: None)
    event = factories.order_placed_event()

    assert run_handler(FakeTask(), handler, event)["outcome"] == "done"
    assert run_handler(FakeTask(), handler, event)["outcome"] == "duplicate"

    after = scrape(client, settings)
    for outcome in ("done", "duplicate"):
        assert after(DURATION, handler=handler.name, outcome=outcome) == 1
    assert after("orderpipe_duplicates_absorbed_total", handler=handler.name) == 1
    assert after("orderpipe_handler_duration_seconds_sum", handler=handler.name, outcome="done") > 0
    assert after("orderpipe_handlers_in_progress", handler=handler.name) == 0


def test_a_transient_error_counts_a_retry_and_a_permanent_one_a_dead_letter_by_reason(
    client, settings, django_capture_on_commit_callbacks
):
    # Given a handler failing for a while, then for good
    errors = [TransientError("gateway timeout"), PermanentError("no such order")]

    def fail(data, event):
        raise errors.pop(0)

    handler = handler_doing(fail)
    event = factories.order_placed_event()
    before = scrape(client, settings)

    # When it is retried once, then dead-lettered
    with pytest.raises(Retry):
        run_handler(FakeTask(0), handler, event)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(PermanentError):
        run_handler(FakeTask(1), handler, event)

    # Then each run shows by its outcome, and the dead letter by its reason and queue
    after = scrape(client, settings)
    assert after(DURATION, handler=handler.name, outcome="retrying") == 1
    assert after(DURATION, handler=handler.name, outcome="dead-lettered") == 1
    assert after("orderpipe_handler_retries_total", handler=handler.name) == 1
    stored = ("orderpipe_dead_letters_stored_total", {"reason": "permanent", "queue": handler.task_queue})
    assert after(stored[0], **stored[1]) == before(stored[0], **stored[1]) + 1
    assert DeadLetter.objects.get().handler == handler.name


def test_a_run_whose_dead_letter_cannot_be_stored_failed(client, settings, monkeypatch):
    def refuse(**_):
        raise DatabaseError("value too long")

    def reject(data, event):
        raise PermanentError("bad")

    monkeypatch.setattr(deadletters, "store", refuse)
    handler = handler_doing(reject)

    with pytest.raises(Reject):
        run_handler(FakeTask(), handler, factories.order_placed_event())

    assert scrape(client, settings)(DURATION, handler=handler.name, outcome="failed") == 1


def test_in_a_batch_each_handler_run_shows_by_its_outcome(client, settings, django_capture_on_commit_callbacks):
    ok, flaky, bad = (factories.order_placed_event() for _ in range(3))
    behaviour = {ok["id"]: None, flaky["id"]: TransientError("timeout"), bad["id"]: PermanentError("no")}

    def handle(data, event):
        if (error := behaviour[event.id]) is not None:
            raise error

    handler = handler_doing(handle)
    with django_capture_on_commit_callbacks(execute=True):
        run_batch(FakeTask(task_id="batch-m"), inventory_with(handler), [ok, flaky, bad, ok])

    after = scrape(client, settings)
    expected = {"done": 1, "retrying": 1, "dead-lettered": 1, "duplicate": 1, "failed": 0}
    assert {outcome: after(DURATION, handler=handler.name, outcome=outcome) for outcome in expected} == expected
    assert after("orderpipe_handler_retries_total", handler=handler.name) == 1


@pytest.mark.parametrize("reason", ["poison", "forged", "hop_limit"])
def test_a_message_the_intake_refuses_is_counted_by_reason_once_stored(
    client, settings, django_capture_on_commit_callbacks, reason
):
    queue = f"metrics-test-{reason}.events"
    with django_capture_on_commit_callbacks(execute=True):
        deadletters.store(reason=reason, queue=queue, body=b"\x80garbage", error="refused")

    assert scrape(client, settings)("orderpipe_dead_letters_stored_total", reason=reason, queue=queue) == 1


def test_a_dead_letter_rolled_back_with_its_transaction_is_not_counted(
    client, settings, django_capture_on_commit_callbacks
):
    queue = "metrics-test-rolled-back.events"
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        deadletters.store(reason="poison", queue=queue, body="x", error="refused")
        raise RuntimeError("the transaction that stored it fails after all")

    assert scrape(client, settings)("orderpipe_dead_letters_stored_total", reason="poison", queue=queue) == 0


class ConfirmingPublisher:
    """Stands in for a producer's publisher: the broker confirms every message."""

    def send(self, outgoing) -> None:
        list(outgoing)

    def wait(self) -> dict[str, str]:
        return {}


class ConfirmingPublishers:
    def get(self, user: str) -> ConfirmingPublisher:
        return ConfirmingPublisher()


def test_the_relay_observes_how_old_each_event_is_when_the_broker_confirms_it(client, settings):
    # Given an event written a minute ago
    with transaction.atomic():
        publish(factories.order_placed())
    row = OutboxMessage.objects.get()
    row.body["time"] = (timezone.now() - timedelta(minutes=1)).isoformat()
    before = scrape(client, settings)

    # When the relay publishes it
    outcome = publish_rows(ConfirmingPublishers(), [row], claimer="metrics-test")

    # Then its age counts a minute or so
    after = scrape(client, settings)
    assert outcome.confirmed == [row.id]
    count, total = "orderpipe_event_publish_age_seconds_count", "orderpipe_event_publish_age_seconds_sum"
    assert after(count, producer="orders") == before(count, producer="orders") + 1
    assert 60 <= after(total, producer="orders") - before(total, producer="orders") < 120
    bucket = "orderpipe_event_publish_age_seconds_bucket"
    assert after(bucket, producer="orders", le="30.0") == before(bucket, producer="orders", le="30.0")
