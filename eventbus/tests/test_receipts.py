"""When the intake received an event travels in the task message's headers to the inbox row (delivered_at), through
a handler's own task, a batch, and a batch's event sent on alone; called directly (no worker)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from eventbus.errors import TransientError
from eventbus.handling import run_batch, run_handler, send_handler_task
from eventbus.models import InboxMessage
from eventbus.receipts import RECEIVED_HEADER, received_times
from eventbus.subscriptions import handler_by_name
from eventbus.tests.stand_ins import FakeTask, inventory_with, reserve_stock_doing
from tests import factories

pytestmark = pytest.mark.django_db

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


@pytest.fixture(autouse=True)
def stock() -> None:
    """The products of the events' lines, in stock for inventory's handler to hold."""
    factories.product("P001", stock=10)
    factories.product("P002", stock=10)


def test_a_handler_task_stores_when_its_event_was_received():
    raw = factories.order_placed_event(("P001", 1))
    task = FakeTask(task_id="task-1", headers={RECEIVED_HEADER: {raw["id"]: RECEIVED.timestamp()}})

    run_handler(task, handler_by_name("inventory.reserve_stock"), raw)

    assert InboxMessage.objects.get().delivered_at == RECEIVED


def test_a_task_sent_without_receipts_is_handled_with_none():
    raw = factories.order_placed_event(("P001", 1))

    assert run_handler(FakeTask(task_id="task-1"), handler_by_name("inventory.reserve_stock"), raw)["outcome"] == "done"

    assert InboxMessage.objects.get().delivered_at is None


def test_a_batch_stores_each_events_receipt_and_passes_it_on_with_an_event_that_goes_on_alone():
    ok, flaky = (factories.order_placed_event((sku, 1)) for sku in ("P001", "P002"))
    receipts = {ok["id"]: RECEIVED.timestamp(), flaky["id"]: RECEIVED.timestamp() + 0.5}

    def handle(data, event):
        if event.id == flaky["id"]:
            raise TransientError("gateway timeout")

    task = FakeTask(task_id="batch-1", headers={RECEIVED_HEADER: receipts})

    run_batch(task, inventory_with(reserve_stock_doing(handle)), [ok, flaky])

    assert InboxMessage.objects.get(event_id=ok["id"]).delivered_at == RECEIVED
    [alone] = task.sent
    assert alone["args"] == [flaky] and alone["headers"] == {RECEIVED_HEADER: {flaky["id"]: receipts[flaky["id"]]}}


def test_receipts_go_in_the_headers_of_a_handler_task_sent_on():
    raw = factories.order_placed_event(("P001", 1))
    task = FakeTask(task_id="intake")  # its app records what is sent

    send_handler_task(task.app, handler_by_name("inventory.reserve_stock"), raw, received={raw["id"]: 1.5})
    send_handler_task(task.app, handler_by_name("inventory.reserve_stock"), raw)

    assert [sent["headers"] for sent in task.sent] == [
        {RECEIVED_HEADER: {raw["id"]: 1.5}}, {},
    ]  # fmt: skip


@pytest.mark.parametrize("value", [None, "1.5", ["a"], {"e": "soon"}])
def test_a_header_that_is_not_a_map_of_times_gives_no_receipts(value):
    assert received_times(SimpleNamespace(**{RECEIVED_HEADER: value})) == {}
