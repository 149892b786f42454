"""The waterfall of a saga, from the rows the pipeline records (outbox, inbox, task results), written by hand with
known times: hops in causation order, durations and offsets, batches, retries and pending hops."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django_celery_results.models import TaskResult

from eventbus.models import InboxMessage, OutboxMessage
from eventbus.selectors import Segment, waterfall
from eventbus.subscriptions import handler_by_name

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SAGA = str(uuid.uuid4())
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def ms(n: float) -> timedelta:
    return timedelta(milliseconds=n)


def written(event_type: str, *, when: float, published: float | None, cause: str = "", trace: str = "") -> str:
    """An outbox row of the saga, written `when` ms after T0 and published (confirmed) `published` ms after."""
    event_id = str(uuid.uuid4())
    body = {"id": event_id, "type": event_type, "source": "/test", "correlationid": SAGA,
            "causationid": cause or event_id}  # fmt: skip
    if trace:
        body["traceparent"] = trace
    row = OutboxMessage.objects.create(
        event_id=event_id, event_type=event_type, exchange="x", routing_key="k", correlation_id=SAGA, body=body
    )
    sent_at = None if published is None else at(published)
    OutboxMessage.objects.filter(pk=row.pk).update(created_at=at(when), sent_at=sent_at)
    return event_id


def handled(
    handler: str, event_id: str, *, delivered: float | None, started: float, done: float | None, result: dict,
    task_id: str = "",
) -> str:  # fmt: skip
    """The inbox row of a handling (its own task unless `task_id` names a batch), and the task's result."""
    task_id = task_id or handler_by_name(handler).task_id(event_id)
    row = InboxMessage.objects.create(
        handler=handler, event_id=event_id, event_type="t", correlation_id=SAGA, task_id=task_id,
        delivered_at=None if delivered is None else at(delivered),
    )  # fmt: skip
    InboxMessage.objects.filter(pk=row.pk).update(processed_at=at(started))
    if done is not None:
        task_result(task_id, "SUCCESS", result, done)
    return task_id


def task_result(task_id: str, status: str, result: dict, done: float) -> None:
    TaskResult.objects.update_or_create(task_id=task_id, defaults={"status": status, "result": json.dumps(result)})
    TaskResult.objects.filter(task_id=task_id).update(date_done=at(done))


def lanes_by_name(fall) -> dict[str, object]:
    return {lane.handler or lane.event_type: lane for lane in fall.lanes}


def test_each_event_follows_its_cause_with_each_hop_timed_from_the_first_event():
    # Given a saga: OrderPlaced, then StockReserved and PaymentAuthorized caused by it, OrderConfirmed caused by
    # PaymentAuthorized; written in this id order, each handled by its handlers' own tasks
    done = {"outcome": "done", "attempt": 1}
    placed = written("orders.OrderPlaced.v1", when=0, published=10, trace=f"00-{TRACE_ID}-00f067aa0ba902b7-01")
    handled("inventory.reserve_stock", placed, delivered=12, started=15, done=30, result=done)
    handled("payments.authorize_payment", placed, delivered=13, started=14, done=25, result=done)
    authorized = written("payments.PaymentAuthorized.v1", when=24, published=40, cause=placed)
    reserved = written("inventory.StockReserved.v1", when=28, published=40, cause=placed)
    handled("orders.stock_reserved", reserved, delivered=42, started=44, done=50, result=done)
    handled("orders.payment_authorized", authorized, delivered=43, started=51, done=60, result=done)
    confirmed = written("orders.OrderConfirmed.v1", when=59, published=70, cause=authorized)
    handled("inventory.commit_stock", confirmed, delivered=72, started=73, done=80, result=done)
    handled("payments.capture_payment", confirmed, delivered=72, started=75, done=90, result=done)

    fall = waterfall(correlation_id=SAGA, now=at(10_000))

    # Then each event comes after its cause (siblings oldest first), followed by its handlers
    order = [(lane.handler or lane.event_type, lane.depth) for lane in fall.lanes]
    assert order == [
        ("orders.OrderPlaced.v1", 0), ("inventory.reserve_stock", 0), ("payments.authorize_payment", 0),
        ("payments.PaymentAuthorized.v1", 1), ("orders.payment_authorized", 1),
        ("orders.OrderConfirmed.v1", 2), ("inventory.commit_stock", 2), ("payments.capture_payment", 2),
        ("inventory.StockReserved.v1", 1), ("orders.stock_reserved", 1),
    ]  # fmt: skip
    # And the span runs from the first event written to the last hop; the trace id comes from the traceparent
    assert fall.start == T0 and fall.span == ms(90) and fall.complete
    assert fall.trace_ids == [TRACE_ID]
    lanes = lanes_by_name(fall)
    event = lanes["orders.OrderPlaced.v1"]
    assert [(h.name, h.offset, h.took) for h in event.hops] == [("written", ms(0), None), ("published", ms(10), ms(10))]
    assert [(s.kind, s.start, s.end) for s in event.segments] == [("outbox", ms(0), ms(10))]
    # And each handler's hops: delivered after the event was published, started, handled when its task ended
    reserve = lanes["inventory.reserve_stock"]
    assert [(h.name, h.offset, h.took) for h in reserve.hops] == [
        ("delivered", ms(12), ms(2)), ("started", ms(15), ms(3)), ("handled", ms(30), ms(15)),
    ]  # fmt: skip
    assert [(s.kind, s.start, s.end) for s in reserve.segments] == [
        ("broker", ms(10), ms(12)), ("queued", ms(12), ms(15)), ("handler", ms(15), ms(30)),
    ]  # fmt: skip
    assert (reserve.status, reserve.state, reserve.attempt, reserve.batched) == ("done", "SUCCESS", 1, False)


def test_a_worker_may_receive_an_event_before_the_relay_records_the_confirm():
    # Given an event the relay took at 8 ms, a worker received at 9 ms, and whose confirm the relay recorded at 10 ms
    placed = written("orders.OrderPlaced.v1", when=0, published=10)
    OutboxMessage.objects.update(last_attempt_at=at(8))
    handled("inventory.reserve_stock", placed, delivered=9, started=11, done=20, result={"outcome": "done"})

    lane = lanes_by_name(waterfall(correlation_id=SAGA, now=at(100)))["inventory.reserve_stock"]

    # Then the stretch to the intake runs from the relay's publish, not from the confirm
    assert lane.hops[0].took == ms(1) and lane.segments[0] == Segment("broker", ms(8), ms(9))


def test_a_batched_event_is_handled_when_its_batch_task_ended():
    # Given an event handled, with others, by a batch task
    placed = written("orders.OrderPlaced.v1", when=0, published=5)
    batch = {"events": [{"id": str(uuid.uuid4()), "handlers": {"inventory.reserve_stock": "done"}},
                        {"id": placed, "handlers": {"inventory.reserve_stock": "done"}}]}  # fmt: skip
    handled("inventory.reserve_stock", placed, delivered=7, started=20, done=45, result=batch, task_id="batch-1")

    lane = lanes_by_name(waterfall(correlation_id=SAGA, now=at(100)))["inventory.reserve_stock"]

    # Then its lane names the batch task and ends when the batch's transaction committed
    assert lane.batched and lane.task_id == "batch-1" and lane.status == "done"
    assert [(h.name, h.took) for h in lane.hops] == [("delivered", ms(2)), ("started", ms(13)), ("handled", ms(25))]


def test_a_retried_handler_waits_in_the_queue_from_its_first_delivery_to_its_last_attempt():
    # Given a handler that failed twice: its inbox row holds the first receipt and the start of the third attempt
    placed = written("orders.OrderPlaced.v1", when=0, published=5)
    retried = {"outcome": "done", "attempt": 3}
    handled("payments.authorize_payment", placed, delivered=6, started=3_006, done=3_020, result=retried)

    lane = lanes_by_name(waterfall(correlation_id=SAGA, now=at(5_000)))["payments.authorize_payment"]

    # Then the queued stretch holds the failed attempts and their backoff, and the lane says which attempt won
    assert lane.attempt == 3 and not lane.batched
    assert [(h.name, h.took) for h in lane.hops] == [("delivered", ms(1)), ("started", ms(3_000)), ("handled", ms(14))]


def test_pending_and_failed_hops_are_shown_as_such_up_to_now():
    # Given an event published whose handlers have not all succeeded: one retrying, one dead-lettered, and
    # an event the relay has not published yet
    placed = written("orders.OrderPlaced.v1", when=0, published=10)
    task_result(handler_by_name("payments.authorize_payment").task_id(placed), "RETRY", {"exc_type": "X"}, 500)
    task_result(handler_by_name("inventory.reserve_stock").task_id(placed), "FAILURE", {"exc_type": "Y"}, 300)
    written("orders.OrderConfirmed.v1", when=600, published=None, cause=placed)

    fall = waterfall(correlation_id=SAGA, now=at(2_000))

    # Then the span runs to now, and each unfinished lane says how far it got
    assert fall.span == ms(2_000) and not fall.complete
    lanes = lanes_by_name(fall)
    retrying = lanes["payments.authorize_payment"]
    assert (retrying.status, retrying.state) == ("pending", "RETRY")
    assert [h.at for h in retrying.hops] == [None, None, None]
    assert [(s.kind, s.start, s.end) for s in retrying.segments] == [("pending", ms(10), ms(2_000))]
    failed = lanes["inventory.reserve_stock"]
    assert failed.status == "failed" and failed.hops[-1].offset == ms(300)
    assert [(s.kind, s.start, s.end) for s in failed.segments] == [("failed", ms(10), ms(300))]
    unpublished = lanes["orders.OrderConfirmed.v1"]
    assert unpublished.status == "pending" and unpublished.hops[1].at is None
    assert [(s.kind, s.start, s.end) for s in unpublished.segments] == [("pending", ms(600), ms(2_000))]
    capture = lanes["payments.capture_payment"]
    assert capture.status == "pending" and capture.segments[0].start == ms(600)


def test_an_inbox_row_from_before_receipts_were_recorded_has_no_delivered_hop():
    placed = written("orders.OrderPlaced.v1", when=0, published=10)
    handled("inventory.reserve_stock", placed, delivered=None, started=14, done=20, result={"outcome": "done"})

    lane = lanes_by_name(waterfall(correlation_id=SAGA, now=at(100)))["inventory.reserve_stock"]

    assert lane.status == "done" and lane.hops[0].at is None
    assert [(h.name, h.took) for h in lane.hops[1:]] == [("started", ms(4)), ("handled", ms(6))]
    assert [s.kind for s in lane.segments] == ["queued", "handler"]


@pytest.mark.parametrize(
    "traceparent",
    ["", "not a traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01"],
)
def test_a_missing_or_malformed_traceparent_gives_no_trace_id(traceparent):
    written("orders.OrderPlaced.v1", when=0, published=10, trace=traceparent)

    assert waterfall(correlation_id=SAGA, now=at(100)).trace_ids == []


def test_a_saga_without_events_has_an_empty_waterfall():
    fall = waterfall(correlation_id=SAGA)

    assert (fall.start, fall.span, fall.lanes, fall.complete) == (None, timedelta(0), [], False)
