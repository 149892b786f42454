"""When the intake received an event travels in the task message's headers to the inbox row (delivered_at), through
a handler's own task, a batch, and a batch's event sent on alone; called directly (no worker)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from eventbus.envelope import new_event
from eventbus.errors import TransientError
from eventbus.handling import run_batch, run_handler, send_batch_task, send_handler_task
from eventbus.models import InboxMessage
from eventbus.receipts import RECEIVED_HEADER, received_times
from eventbus.subscriptions import handler_by_name, subscribers
from tests import factories

pytestmark = pytest.mark.django_db

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


class Task:
    """Stands in for a bound task whose message carried `headers` (Celery makes each header a request attribute)."""

    def __init__(self, task_id: str, headers: dict | None = None) -> None:
        self.request = SimpleNamespace(id=task_id, called_directly=True, retries=0, **(headers or {}))
        self.sent: list[dict] = []
        self.app = SimpleNamespace(send_task=lambda name, **options: self.sent.append({"name": name, **options}))


def placed(sku: str) -> dict:
    factories.product(sku, stock=10)
    return new_event(factories.order_placed((sku, 1))).to_dict()


def test_a_handler_task_stores_when_its_event_was_received():
    raw = placed("P001")
    task = Task("task-1", {RECEIVED_HEADER: {raw["id"]: RECEIVED.timestamp()}})

    run_handler(task, handler_by_name("inventory.reserve_stock"), raw)

    assert InboxMessage.objects.get().delivered_at == RECEIVED


def test_a_task_sent_without_receipts_is_handled_with_none():
    raw = placed("P001")

    assert run_handler(Task("task-1"), handler_by_name("inventory.reserve_stock"), raw)["outcome"] == "done"

    assert InboxMessage.objects.get().delivered_at is None


def test_a_batch_stores_each_events_receipt_and_passes_it_on_with_an_event_that_goes_on_alone():
    ok, flaky = placed("P001"), placed("P002")
    receipts = {ok["id"]: RECEIVED.timestamp(), flaky["id"]: RECEIVED.timestamp() + 0.5}

    def handle(data, event):
        if event.id == flaky["id"]:
            raise TransientError("gateway timeout")

    handler = replace(handler_by_name("inventory.reserve_stock"), function=handle)
    subscriber = SimpleNamespace(service="inventory", batch_task="inventory.handle_batch",
                                 task_queue="inventory.tasks", handlers_for=lambda _: [handler])  # fmt: skip
    task = Task("batch-1", {RECEIVED_HEADER: receipts})

    run_batch(task, subscriber, [ok, flaky])

    assert InboxMessage.objects.get(event_id=ok["id"]).delivered_at == RECEIVED
    [alone] = task.sent
    assert alone["args"] == [flaky] and alone["headers"] == {RECEIVED_HEADER: {flaky["id"]: receipts[flaky["id"]]}}


def test_the_intakes_receipts_go_in_the_headers_of_the_tasks_it_sends():
    raw = placed("P001")
    task = Task("intake")  # its app records what is sent

    send_handler_task(task.app, handler_by_name("inventory.reserve_stock"), raw, received={raw["id"]: 1.5})
    inventory = next(s for s in subscribers() if s.service == "inventory")
    send_batch_task(task.app, inventory, [raw], received={raw["id"]: 2.5})
    send_handler_task(task.app, handler_by_name("inventory.reserve_stock"), raw)

    assert [sent["headers"] for sent in task.sent] == [
        {RECEIVED_HEADER: {raw["id"]: 1.5}}, {RECEIVED_HEADER: {raw["id"]: 2.5}}, {},
    ]  # fmt: skip


@pytest.mark.parametrize("value", [None, "1.5", ["a"], {"e": "soon"}])
def test_a_header_that_is_not_a_map_of_times_gives_no_receipts(value):
    assert received_times(SimpleNamespace(**{RECEIVED_HEADER: value})) == {}
