"""Handling events that waited together in one batch task, called directly (no worker): the batch whole when
no handler fails, else each (handler, event) in its own savepoint, one failure not failing its neighbours."""

from __future__ import annotations

import uuid

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from eventbus.errors import PermanentError, TransientError
from eventbus.handling import run_batch
from eventbus.models import DeadLetter, InboxMessage, OutboxMessage
from eventbus.subscriptions import handler_by_name
from eventbus.tests.stand_ins import FakeTask, inventory, inventory_with, reserve_stock_doing
from inventory.models import Product
from tests import factories

pytestmark = pytest.mark.django_db


def test_a_batch_applies_each_event_once_with_its_own_inbox_row():
    factories.product("P001", stock=10)
    first, second = factories.order_placed_event(("P001", 2)), factories.order_placed_event(("P001", 3))

    result = run_batch(FakeTask(task_id="batch-1"), inventory(), [first, second, first])

    outcomes = [event["handlers"]["inventory.reserve_stock"] for event in result["events"]]
    assert outcomes == ["done", "done", "duplicate"]
    assert Product.objects.get(sku="P001").stock_reserved == 5
    rows = InboxMessage.objects.filter(handler="inventory.reserve_stock")
    assert sorted(str(r.event_id) for r in rows) == sorted([first["id"], second["id"]])
    assert {r.task_id for r in rows} == {"batch-1"}, "the inbox names the batch that handled each event"
    assert OutboxMessage.objects.filter(event_type="inventory.StockReserved.v1").count() == 2


def test_a_batch_in_which_no_handler_fails_takes_no_savepoint_per_event():
    factories.product("P001", stock=10)
    events = [factories.order_placed_event(("P001", 1)) for _ in range(3)]

    with CaptureQueriesContext(connection) as queries:
        result = run_batch(FakeTask(task_id="batch-1"), inventory(), events)

    assert [event["handlers"]["inventory.reserve_stock"] for event in result["events"]] == ["done"] * 3
    statements = [query["sql"] for query in queries]
    assert len([sql for sql in statements if sql.startswith("SAVEPOINT")]) == 1, "the batch's (in the test's)"
    assert len([sql for sql in statements if sql.startswith('INSERT INTO "eventbus_inboxmessage"')]) == 1
    assert len([sql for sql in statements if sql.startswith('INSERT INTO "eventbus_outboxmessage"')]) == 1
    assert InboxMessage.objects.filter(handler="inventory.reserve_stock").count() == 3
    assert OutboxMessage.objects.filter(event_type="inventory.StockReserved.v1").count() == 3


def test_a_batch_tried_whole_skips_what_the_inbox_holds_and_repeats_within_it():
    factories.product("P001", stock=10)
    handled, new = factories.order_placed_event(("P001", 2)), factories.order_placed_event(("P001", 3))
    run_batch(FakeTask(task_id="batch-1"), inventory(), [handled])

    with CaptureQueriesContext(connection) as queries:
        result = run_batch(FakeTask(task_id="batch-2"), inventory(), [handled, new, new])

    outcomes = [event["handlers"]["inventory.reserve_stock"] for event in result["events"]]
    assert outcomes == ["duplicate", "done", "duplicate"]
    assert len([query for query in queries if query["sql"].startswith("SAVEPOINT")]) == 1, "tried whole, at once"
    assert Product.objects.get(sku="P001").stock_reserved == 5
    assert dict(InboxMessage.objects.values_list("event_id", "task_id")) == {
        uuid.UUID(handled["id"]): "batch-1",
        uuid.UUID(new["id"]): "batch-2",
    }


def test_in_a_batch_a_failing_event_takes_back_only_its_own_work():
    ok, flaky, bad = (factories.order_placed_event((sku, 1)) for sku in ("P001", "P002", "P003"))
    behaviour = {ok["id"]: None, flaky["id"]: TransientError("gateway timeout"), bad["id"]: PermanentError("no")}

    def handle(data, event):
        factories.product(f"X-{event.id[:8]}")  # an effect, which a failure must take back
        if (error := behaviour[event.id]) is not None:
            raise error

    task = FakeTask(task_id="batch-1")
    result = run_batch(task, inventory_with(reserve_stock_doing(handle)), [ok, flaky, bad])

    outcomes = [event["handlers"]["inventory.reserve_stock"] for event in result["events"]]
    assert outcomes == ["done", "retrying", "dead-lettered"]
    assert list(Product.objects.values_list("sku", flat=True)) == [f"X-{ok['id'][:8]}"]
    assert [str(r.event_id) for r in InboxMessage.objects.all()] == [ok["id"]]
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.event_id, letter.handler) == ("permanent", bad["id"], "inventory.reserve_stock")
    # The flaky one goes on alone, as its handler's own task, on its second attempt.
    [retry] = task.sent
    assert retry["name"] == "inventory.reserve_stock" and retry["args"] == [flaky]
    assert retry["retries"] == 1 and retry["countdown"] >= 1 and retry["queue"] == "inventory.tasks"
    assert retry["task_id"] == handler_by_name("inventory.reserve_stock").task_id(flaky["id"])


def test_in_a_batch_an_event_delivered_again_is_dead_lettered_once_and_goes_on_named_so():
    bad, flaky = factories.order_placed_event(("P003", 1)), factories.order_placed_event(("P004", 1))
    behaviour = {bad["id"]: PermanentError("no"), flaky["id"]: TransientError("gateway timeout")}

    def handle(data, event):
        raise behaviour[event.id]

    subscriber = inventory_with(reserve_stock_doing(handle))
    run_batch(FakeTask(task_id="batch-1"), subscriber, [bad])
    # Its acknowledgement lost, the broker delivers the event again; the intake names it in the task's headers
    again = FakeTask(task_id="batch-2", headers={"eventbus_redelivered": [bad["id"], flaky["id"]]})
    run_batch(again, subscriber, [bad, flaky])

    assert DeadLetter.objects.count() == 1
    [retry] = again.sent  # the flaky one goes on alone, still named as delivered before
    assert retry["args"] == [flaky] and retry["headers"]["eventbus_redelivered"] == [flaky["id"]]


def test_a_batch_whose_transaction_fails_sends_every_event_on_alone():
    events = [factories.order_placed_event((sku, 1)) for sku in ("P001", "P002")]

    def database_gone(data, event):
        raise OperationalError("server closed the connection unexpectedly")

    task = FakeTask(task_id="batch-1")
    result = run_batch(task, inventory_with(reserve_stock_doing(database_gone)), events)

    assert "OperationalError" in result["split"]
    assert [sent["args"] for sent in task.sent] == [[events[0]], [events[1]]]
    assert all(sent["retries"] == 0 for sent in task.sent)
    assert not InboxMessage.objects.exists() and not DeadLetter.objects.exists()


def test_a_batch_whose_inbox_rows_meet_a_duplicates_runs_again_with_savepoints():
    first, second = factories.order_placed_event(("P001", 1)), factories.order_placed_event(("P001", 1))

    def handle(data, event):
        factories.product(f"X-{event.id[:8]}")
        if event.id == first["id"]:  # as if the second event's own task, running beside, committed meanwhile
            InboxMessage.objects.create(handler="inventory.reserve_stock", event_id=second["id"], event_type="t")

    with CaptureQueriesContext(connection) as queries:
        result = run_batch(FakeTask(task_id="batch-1"), inventory_with(reserve_stock_doing(handle)), [first, second])

    assert [event["handlers"]["inventory.reserve_stock"] for event in result["events"]] == ["done", "duplicate"]
    assert len([query for query in queries if query["sql"].startswith("SAVEPOINT")]) > 1, "ran again, savepoints"
    assert list(Product.objects.values_list("sku", flat=True)) == [f"X-{first['id'][:8]}"]
