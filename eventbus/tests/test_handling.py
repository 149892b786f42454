"""Publishing into the outbox and applying a handler exactly once, called directly (no worker)."""

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from celery.exceptions import Reject, Retry
from django.db import connection, transaction

from eventbus.envelope import CloudEvent, from_dict
from eventbus.errors import PermanentError, TransientError
from eventbus.handling import _take_service_lock, apply_once, backoff, run_handler
from eventbus.models import DeadLetter, InboxMessage, OutboxMessage
from eventbus.outbox import HopLimitExceeded, publish
from eventbus.subscriptions import handler_by_name
from eventbus.tests.stand_ins import FakeTask, reserve_stock_doing
from inventory.models import Product
from tests import factories

pytestmark = pytest.mark.django_db


def placed_event() -> CloudEvent:
    return from_dict(OutboxMessage.objects.get(event_type="orders.OrderPlaced.v1").body)


@pytest.mark.django_db(transaction=True)
def test_publish_needs_the_transaction_of_the_change_it_announces():
    with pytest.raises(RuntimeError, match="inside the transaction"):
        publish(factories.order_placed())
    assert not OutboxMessage.objects.exists()


def test_publish_writes_an_outbox_row_and_nudges_the_relay_after_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        event = publish(factories.order_placed(), correlation_id="saga-7")
    row = OutboxMessage.objects.get()
    assert (row.exchange, row.routing_key, str(row.event_id)) == ("orders.events", "order.placed", event.id)
    assert row.sent_at is None and row.body["correlationid"] == "saga-7"
    assert len(callbacks) == 1


def test_a_handler_applies_an_event_once_and_its_events_inherit_correlation_and_causation():
    # Given an order whose OrderPlaced sits in the outbox
    factories.product("P001", stock=5)
    factories.order(("P001", 2))
    event = placed_event()
    handler = handler_by_name("inventory.reserve_stock")

    # When the inventory handler gets it twice
    first = apply_once(handler, event, "task-1")
    second = apply_once(handler, event, "task-1")

    # Then stock is held once, and StockReserved continues the saga's chain
    assert (first, second) == ("done", "duplicate")
    assert Product.objects.get(sku="P001").stock_reserved == 2
    assert InboxMessage.objects.filter(handler=handler.name, event_id=event.id).count() == 1
    reserved = OutboxMessage.objects.get(event_type="inventory.StockReserved.v1").body
    assert reserved["correlationid"] == event.correlationid
    assert reserved["causationid"] == event.id and reserved["hops"] == event.hops + 1


def test_the_hop_limit_stops_a_chain_that_grows_too_long(settings):
    factories.product("P001", stock=5)
    factories.order(("P001", 1))
    event = placed_event()
    looping = replace(event, hops=settings.EVENTBUS_MAX_HOPS)
    with pytest.raises(HopLimitExceeded):
        apply_once(handler_by_name("inventory.reserve_stock"), looping, "task-2")
    assert not InboxMessage.objects.exists(), "the failed attempt left no trace"
    assert Product.objects.get(sku="P001").stock_reserved == 0


def test_backoff_grows_exponentially_with_jitter_up_to_a_cap(settings):
    settings.EVENTBUS_RETRY_BASE_DELAY, settings.EVENTBUS_RETRY_MAX_DELAY = 1.0, 10.0
    for attempt, ceiling in [(0, 1), (1, 2), (2, 4), (3, 8), (4, 10), (12, 10)]:
        delays = [backoff(attempt) for _ in range(50)]
        assert all(isinstance(d, int) and max(1, ceiling // 2) <= d <= ceiling for d in delays), (attempt, delays)
        if ceiling >= 4:
            assert len(set(delays)) > 1, "jittered"


def failing_handler(error: Exception):
    def explode(data, event):
        raise error

    return reserve_stock_doing(explode)


class BrokerRefusingRetries(FakeTask):
    """A task whose retry the broker refuses: Celery then rejects the message without requeueing it."""

    def retry(self, *, exc: Exception, countdown: float, max_retries: int | None) -> Retry:
        raise Reject(ConnectionError("publish not confirmed"), requeue=False)


def test_an_event_whose_retry_the_broker_refuses_goes_back_to_its_queue_not_to_the_dead_letters(monkeypatch):
    monkeypatch.setattr("eventbus.handling.time.sleep", lambda seconds: None)
    raw = factories.order_placed_event()

    with pytest.raises(Reject) as rejected:
        run_handler(BrokerRefusingRetries(), failing_handler(TransientError("gateway timeout")), raw)

    assert rejected.value.requeue is True
    assert not DeadLetter.objects.exists()


def test_a_transient_error_retries_until_the_attempts_run_out_then_is_dead_lettered(settings):
    settings.EVENTBUS_MAX_ATTEMPTS = 3
    raw = factories.order_placed_event()
    handler = failing_handler(TransientError("gateway timeout"))

    for retries in (0, 1):
        task = FakeTask(retries)
        with pytest.raises(Retry):
            run_handler(task, handler, raw)
        assert 0 < task.countdowns[0] <= settings.EVENTBUS_RETRY_MAX_DELAY
    assert not DeadLetter.objects.exists()

    with pytest.raises(TransientError):
        run_handler(FakeTask(2), handler, raw)
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.attempts, letter.handler) == ("exhausted", 3, "inventory.reserve_stock")
    assert "TransientError: gateway timeout" in letter.error and "Traceback" in letter.traceback
    assert letter.event_id == raw["id"] and json.loads(letter.body) == raw


def test_a_permanent_error_is_dead_lettered_at_once():
    raw = factories.order_placed_event()
    with pytest.raises(PermanentError):
        run_handler(FakeTask(0), failing_handler(PermanentError("bad payload")), raw)
    assert DeadLetter.objects.get().reason == "permanent"


def test_a_dead_letter_whose_acknowledgement_was_lost_is_filed_once_when_its_handler_runs_again():
    raw = factories.order_placed_event()
    handler = failing_handler(PermanentError("bad payload"))
    # Filed, then the worker died before the event's acknowledgement: the broker delivers the event again, and
    # the intake names it in the task's headers; or a retry's own task message comes again, marked redelivered.
    for task in (
        FakeTask(0),
        FakeTask(0, headers={"eventbus_redelivered": [raw["id"]]}),
        FakeTask(4, headers={"delivery_info": {"redelivered": True}}),
    ):
        with pytest.raises(PermanentError):
            run_handler(task, handler, raw)
    assert DeadLetter.objects.count() == 1

    # A first delivery (the same event published again, say) is filed
    with pytest.raises(PermanentError):
        run_handler(FakeTask(0), handler, raw)
    assert DeadLetter.objects.count() == 2


@contextmanager
def batch_writing(service: str, *, alone: bool = False) -> Iterator[None]:
    """A batch of `service` (`alone`: a handler task of its own) in the middle of its transaction, in a thread of
    its own, while the block runs."""
    writing, done = threading.Event(), threading.Event()

    def batch_in_progress() -> None:
        try:
            with transaction.atomic():
                _take_service_lock(service, alone=alone)
                writing.set()
                done.wait(timeout=30)
        finally:
            connection.close()

    batch = threading.Thread(target=batch_in_progress)
    batch.start()
    try:
        assert writing.wait(timeout=10)
        yield
    finally:
        done.set()
        batch.join()


def in_a_thread(work: Callable[[], object]) -> threading.Thread:
    """A thread (not started) that does `work` on a database connection of its own."""

    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    return threading.Thread(target=run)


def needs_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's writers always take turns: its IMMEDIATE transactions queue")


def start_and_see_it_wait(thread: threading.Thread, what: str) -> None:
    """Start `thread`, and see it still waiting a second later."""
    thread.start()
    thread.join(timeout=1)
    assert thread.is_alive(), what


def see_it_finish(thread: threading.Thread) -> None:
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_handler_task_of_its_own_waits_while_a_batch_of_its_service_writes():
    needs_postgresql()
    # Given a batch of inventory's in the middle of its transaction (it locked product rows in its own order)
    factories.product("P001", stock=10)
    event = from_dict(factories.order_placed_event(("P001", 2)))

    alone = in_a_thread(lambda: apply_once(handler_by_name("inventory.reserve_stock"), event, "task-2", attempt=2))
    with batch_writing("inventory"):
        # When a retry of one of inventory's events runs meanwhile, it waits for the batch to commit:
        # the two would lock the same rows in no common order and could deadlock
        start_and_see_it_wait(alone, "the lone task waits for the batch")
        assert Product.objects.get(sku="P001").stock_reserved == 0
    see_it_finish(alone)
    assert Product.objects.get(sku="P001").stock_reserved == 2
    assert InboxMessage.objects.filter(handler="inventory.reserve_stock", event_id=event.id).exists()


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_handler_task_does_not_wait_for_another_services_batch():
    needs_postgresql()
    factories.product("P001", stock=10)
    event = from_dict(factories.order_placed_event(("P001", 2)))

    with batch_writing("payments"):
        assert apply_once(handler_by_name("inventory.reserve_stock"), event, "task-2") == "done"
    assert Product.objects.get(sku="P001").stock_reserved == 2


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_handler_tasks_of_their_own_run_side_by_side_but_a_batch_waits_for_them():
    needs_postgresql()
    factories.product("P001", stock=10)
    event = from_dict(factories.order_placed_event(("P001", 2)))

    def batch_of_inventory() -> None:
        with transaction.atomic():
            _take_service_lock("inventory")

    batch = in_a_thread(batch_of_inventory)
    # Given a task of inventory's own in the middle of its transaction
    with batch_writing("inventory", alone=True):
        # When another runs meanwhile, it does not wait (an idle pipeline's events come alone)
        assert apply_once(handler_by_name("inventory.reserve_stock"), event, "task-2") == "done"
        # But a batch of inventory's waits until the first commits
        start_and_see_it_wait(batch, "the batch waits for the task of its own")
    see_it_finish(batch)
    assert Product.objects.get(sku="P001").stock_reserved == 2
