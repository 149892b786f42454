"""The intake's hand-over to the pool, without a broker: the request it makes is the one Celery would have made
of the task message, and the event messages are settled once, when the last request made of them is done."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from celery import current_app

from eventbus import handoff
from eventbus.models import InboxMessage
from eventbus.receipts import RECEIVED_HEADER
from eventbus.subscriptions import handler_by_name
from tests import factories

pytestmark = pytest.mark.django_db
log = logging.getLogger(__name__)


class Message:
    """An event message as the intake holds it: what happened to it is recorded."""

    def __init__(self) -> None:
        self.settled: list[str] = []

    def ack_log_error(self, logger, errors) -> None:
        self.settled.append("ack")

    def reject_log_error(self, logger, errors, requeue=False) -> None:
        self.settled.append("requeue" if requeue else "reject")

    def requeue(self) -> None:
        self.settled.append("requeue")


def delivery(messages: int = 1, requests: int = 1) -> handoff.Delivery:
    consumer = SimpleNamespace(call_soon_ack=lambda f, *args, **kwargs: f(*args, **kwargs))
    return handoff.Delivery(consumer, [Message() for _ in range(messages)], pending=requests)


def settled(d: handoff.Delivery) -> list[list[str]]:
    return [message.settled for message in d.messages]


def test_messages_are_acknowledged_once_when_the_last_request_is_done():
    d = delivery(messages=1, requests=2)
    d.on_ack(log, ())
    assert settled(d) == [[]], "one of two handlers still runs"
    d.on_ack(log, ())
    assert settled(d) == [["ack"]]


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [(["requeue", "ack"], "requeue"), (["reject", "ack"], "reject"), (["reject", "requeue"], "requeue")],
)
def test_a_rejected_request_rejects_its_messages_and_requeue_wins(outcomes, expected):
    d = delivery(messages=2, requests=2)
    for outcome in outcomes:
        d.on_ack(log, ()) if outcome == "ack" else d.on_reject(log, (), requeue=outcome == "requeue")
    assert settled(d) == [[expected], [expected]]


def test_a_failed_hand_over_gives_the_messages_back_and_later_outcomes_settle_nothing():
    d = delivery(messages=1, requests=1)
    d.give_back()
    d.on_ack(log, ())
    assert settled(d) == [["requeue"]]


def test_the_request_is_the_handler_task_celery_would_run_and_acknowledges_its_event_when_done(monkeypatch):
    factories.product("P001", stock=5)
    raw = factories.order_placed_event(("P001", 1))
    handler = handler_by_name("inventory.reserve_stock")
    made = []
    consumer = SimpleNamespace(
        app=current_app,
        hostname="inventory@test",
        connection_errors=(),
        event_dispatcher=None,
        timer=SimpleNamespace(call_at=None),
        apply_eta_task=None,
        disable_rate_limits=True,
        task_buckets={},
        on_task_request=made.append,
        _limit_task=None,
        _limit_post_eta=None,
        pool=SimpleNamespace(apply_async=None),  # request.execute() below runs it in this process
        controller=SimpleNamespace(state=SimpleNamespace(revoked=set())),
        on_task_message=None,
        call_soon_ack=lambda f, *args, **kwargs: f(*args, **kwargs),
    )
    task = current_app.tasks[handler.name]
    consumer.strategies = {handler.name: task.start_strategy(current_app, consumer)}
    d = handoff.Delivery(consumer, [Message()])

    inventory_url = "amqp://inventory:secret@127.0.0.1:5672//"  # the worker's own (Celery reads the variable first)
    monkeypatch.setenv("CELERY_BROKER_URL", inventory_url)
    monkeypatch.setattr(current_app.conf, "broker_url", inventory_url)

    handoff.start_request(
        consumer,
        d,
        handler.name,
        [raw],
        queue=handler.task_queue,
        task_id=handler.task_id(raw["id"]),
        argsrepr="[OrderPlaced]",
        headers={RECEIVED_HEADER: {raw["id"]: 1.5}},
    )
    [request] = made
    assert (request.name, request.id, request.args) == (handler.name, handler.task_id(raw["id"]), [raw])
    assert request.request_dict[RECEIVED_HEADER] == {raw["id"]: 1.5}
    assert request.request_dict["properties"]["user_id"] == "inventory", "sent by the service's own user"
    assert request.delivery_info["routing_key"] == handler.task_queue
    assert settled(d) == [[]], "not acknowledged before it runs"

    request.execute()

    assert InboxMessage.objects.filter(handler=handler.name, event_id=raw["id"]).exists()
    assert settled(d) == [["ack"]]
