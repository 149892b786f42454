"""The intake's hand-over, called directly with a stand-in worker: a lone event goes at once, events that
arrive while the pool is busy go together once a process is free, never waiting past their bound."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from celery import current_app
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from django.db import OperationalError

from eventbus import handoff, intake
from eventbus.envelope import CONTENT_TYPE, new_event
from eventbus.models import DeadLetter
from eventbus.tests import stand_ins
from tests import factories

pytestmark = pytest.mark.django_db


class Hub:
    """The worker's event loop, as far as the intake uses it: timers the test fires by hand."""

    def __init__(self) -> None:
        self.timers: list = []

    def call_later(self, delay, callback):
        self.timers.append(callback)
        return SimpleNamespace(cancel=lambda: self.timers.remove(callback))

    def fire(self) -> None:
        due, self.timers = self.timers, []
        for callback in due:
            callback()


class Message:
    def __init__(self, event) -> None:
        self.body, self.content_type = event.to_json(), CONTENT_TYPE
        self.properties, self.headers, self.acked = {"user_id": "orders"}, {}, False
        self.delivery_info = {"redelivered": False}

    def ack(self) -> None:
        self.acked = True

    def ack_log_error(self, log, errors) -> None:
        self.ack()


@pytest.fixture
def step(monkeypatch):
    sent, deliveries = [], []

    def start_request(consumer, delivery, task_name, args, **_):
        delivery.pending += 1
        deliveries.append(delivery)
        sent.append([raw["id"] for raw in (args[0] if isinstance(args[0], list) else args)])

    monkeypatch.setattr(handoff, "start_request", start_request)
    monkeypatch.setattr(worker_state, "reserved_requests", set())
    worker = SimpleNamespace(
        app=current_app, hub=Hub(), pool=SimpleNamespace(num_processes=2), call_soon_ack=lambda f, *a, **k: f(*a, **k)
    )
    intake_step = intake.EventIntake(worker)
    intake_step.sent = sent
    intake_step.finish = lambda: [delivery.on_ack(None, ()) for delivery in deliveries]
    return intake_step


def busy(n: int) -> None:
    worker_state.reserved_requests.update(object() for _ in range(n))


def arrive(step, count: int) -> list[Message]:
    inventory = stand_ins.inventory()
    messages = [Message(new_event(factories.order_placed())) for _ in range(count)]
    for message in messages:
        step.on_event(inventory, message)
    return messages


def ids(messages) -> list[str]:
    return [json.loads(message.body)["id"] for message in messages]


def test_a_lone_event_goes_at_once_when_a_process_is_free_and_is_acknowledged_when_done(step):
    [message] = arrive(step, 1)
    assert step.sent == [ids([message])] and not message.acked, "unacknowledged while its request runs"
    step.finish()
    assert message.acked


def test_events_arriving_while_the_pool_is_busy_go_together_once_a_process_is_free(step):
    busy(2)
    messages = arrive(step, 5)
    assert step.sent == [] and not any(m.acked for m in messages), "they wait, unacknowledged"

    step.worker_consumer.hub.fire()  # still busy: they keep waiting
    assert step.sent == []
    worker_state.reserved_requests.clear()
    step.worker_consumer.hub.fire()

    assert step.sent == [ids(messages)], "one batch, in arrival order"
    step.finish()
    assert all(m.acked for m in messages)


def test_a_full_batch_goes_at_once_however_busy_the_pool(step, settings):
    settings.EVENTBUS_BATCH_MAX = 3
    busy(2)
    messages = arrive(step, 4)
    assert step.sent == [ids(messages[:3])], "the fourth waits for the next batch"


def test_events_wait_for_a_busy_pool_no_longer_than_the_bound(step, settings):
    settings.EVENTBUS_BATCH_WAIT_SECONDS = 0
    busy(2)
    messages = arrive(step, 2)
    step.worker_consumer.hub.fire()
    assert step.sent == [ids(messages)], "handed over while the pool is still busy: they wait in the pool's queue"


def test_with_one_task_in_flight_allowed_events_wait_while_any_task_runs(step, settings):
    settings.EVENTBUS_INTAKE_TASKS_IN_FLIGHT = 1
    busy(1)  # one pool process of two is free
    messages = arrive(step, 2)
    assert step.sent == [], "held: a task of the worker is in flight"
    worker_state.reserved_requests.clear()
    step.worker_consumer.hub.fire()
    assert step.sent == [ids(messages)]


@pytest.mark.parametrize(("failures", "outcome"), [(1, "acked"), (2, "rejected")])
def test_poison_is_filed_on_a_fresh_connection_when_the_first_store_fails(step, monkeypatch, failures, outcome):
    # A connection opened while SQLite could not be written stays read-only after the file is writable again.
    stored = []

    def store(**letter):
        if len(stored) < failures:
            stored.append(None)
            raise OperationalError("attempt to write a readonly database")
        stored.append(letter["reason"])

    monkeypatch.setattr(intake.deadletters, "store", store)
    message = Message(new_event(factories.order_placed()))
    message.body = b"{not json"
    message.rejected = False
    message.reject = lambda requeue: setattr(message, "rejected", not requeue)

    step.on_event(stand_ins.inventory(), message)

    assert {"acked": message.acked, "rejected": message.rejected} == {
        "acked": outcome == "acked",
        "rejected": outcome == "rejected",
    }, "filed on the second try, else left to the broker's dead-letter queue"
    assert stored[-1] == ("poison" if outcome == "acked" else None)


def test_poison_delivered_again_after_its_acknowledgement_was_lost_is_filed_once(step, monkeypatch):
    # (A worker's hygiene between messages; in the test's transaction it would close the connection.)
    monkeypatch.setattr(intake, "close_old_connections", lambda: None)
    # Given poison filed, whose acknowledgement was lost with the worker: the broker delivers it again
    first = Message(new_event(factories.order_placed()))
    first.body = b"{not json"
    step.on_event(stand_ins.inventory(), first)
    again = Message(new_event(factories.order_placed()))
    again.body, again.delivery_info = first.body, {"redelivered": True}

    # When the intake takes it again
    step.on_event(stand_ins.inventory(), again)

    # Then it is acknowledged, and the store holds the one letter
    assert first.acked and again.acked
    assert DeadLetter.objects.filter(reason=DeadLetter.Reason.POISON).count() == 1


def test_the_intake_starts_once_the_worker_can_make_requests():
    # The hand-over makes requests with the consumer's task strategies, which Celery's Tasks step fills:
    # started before it (while mingle reads the connection) the intake took events it could not hand over.
    consumer_steps = Consumer.Blueprint(steps=current_app.steps["consumer"])
    order = [step.name for step in consumer_steps._finalize_steps(consumer_steps.claim_steps())]
    assert order.index("eventbus.intake.EventIntake") > order.index("celery.worker.consumer.tasks.Tasks")


def test_an_event_the_broker_delivered_again_is_named_so_to_its_handlers(step, monkeypatch):
    headers = []
    monkeypatch.setattr(handoff, "start_request", lambda *args, **options: headers.append(options["headers"]))
    inventory = stand_ins.inventory()
    first, again = Message(new_event(factories.order_placed())), Message(new_event(factories.order_placed()))
    again.delivery_info = {"redelivered": True}

    step.on_event(inventory, first)
    step.on_event(inventory, again)

    assert "eventbus_redelivered" not in headers[0], "a first delivery"
    assert headers[1]["eventbus_redelivered"] == ids([again])
