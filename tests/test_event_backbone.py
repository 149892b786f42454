"""The event backbone end to end: real RabbitMQ, real worker and relay processes, a real database."""

from __future__ import annotations

import json
import uuid
from contextlib import suppress
from decimal import Decimal

import jsonschema
import pytest
import requests
from django.conf import settings
from django.core.management import call_command
from django_celery_results.models import TaskResult
from kombu import Connection, Queue

from chaos.poison import PICKLE, order_placed, poison_batch
from eventbus.broker_admin import subscriber_bind, subscriber_create, subscriber_delete, subscription_bindings
from eventbus.envelope import CONTENT_TYPE, from_dict
from eventbus.identities import publisher_passwords, url_as
from eventbus.models import DeadLetter, InboxMessage, OutboxMessage
from eventbus.sealing import seal
from eventbus.subscriptions import handler_by_name
from eventbus.topology import event_exchange
from inventory.models import Product, Reservation
from orders.events import OrderPlaced
from payments.models import Payment
from tests import factories
from tests.harness import management_auth, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
# The saga moves on after the step a test looks at: held stock gets committed, authorizations captured.
TOOK_STOCK = {Reservation.Status.HELD, Reservation.Status.COMMITTED}
TOOK_PAYMENT = {Payment.Status.AUTHORIZED, Payment.Status.CAPTURED}


@pytest.fixture
def listener(workers, broker_url):
    """A third party's queue, which the administrator declared and bound to `orders.events` for OrderPlaced
    (`manage.py broker_subscriber --queue --event`), read with its read-only credentials: no code change needed."""
    subscriber_bind(broker_url, "listener", "orders", subscription_bindings(["orders.OrderPlaced"]))
    with Connection(subscriber_create(broker_url, "listener")) as connection:
        yield Queue("sub-listener.orders", no_declare=True)(connection.default_channel)
    subscriber_delete(broker_url, "listener")  # its queue too, with what the test left in it


def received(queue, *, timeout: float = 20) -> list:
    messages = []

    def drain():
        while (message := queue.get(no_ack=True)) is not None:
            messages.append(message)
        return messages

    wait_for(drain, timeout=timeout, what=f"a message on {queue.name}")
    return messages


def publish_raw(broker_url: str, body: bytes, *, content_type: str, routing_key: str = "order.placed") -> None:
    """Publish `body` to `orders.events` as the orders service's broker user, as the relay does."""
    url = url_as(broker_url, "orders", publisher_passwords()["orders"])
    with Connection(url, transport_options={"confirm_publish": True}) as connection:
        connection.Producer().publish(
            body,
            exchange=event_exchange("orders"),
            routing_key=routing_key,
            content_type=content_type,
            content_encoding="binary" if content_type == PICKLE else "utf-8",
            user_id="orders",
        )


def reservation_of(order_id) -> Reservation:
    return wait_for(lambda: Reservation.objects.filter(order_id=order_id).first(), what=f"reservation of {order_id}")


def task_result(handler: str, event_id: str, outcome: str) -> dict:
    """Wait for the handler's task (one row per handler and event) to report `outcome`; return its result."""
    task_id = handler_by_name(handler).task_id(event_id)

    def reported():
        row = TaskResult.objects.filter(task_id=task_id, status="SUCCESS").first()
        result = json.loads(row.result) if row else None
        return result if result and result["outcome"] == outcome else None

    return wait_for(reported, what=f"{handler} to report {outcome} for {event_id}")


def test_order_placed_is_published_once_as_a_valid_cloudevent_and_fans_out(listener):
    # Given products, when an order is placed
    factories.product("P001", stock=10)
    order = factories.order(("P001", 2))

    # Then the inventory service's queue got it (stock is held), so did the payments service's ...
    assert reservation_of(order.id).status in TOOK_STOCK
    assert Product.objects.get(sku="P001").available == 8
    payment = wait_for(lambda: Payment.objects.filter(order_id=order.id).first(), what="the payment")
    assert payment.status in TOOK_PAYMENT and payment.amount == Decimal("20.00")
    # ... the outbox row went out once ...
    wait_for(lambda: OutboxMessage.objects.filter(sent_at__isnull=False).exists(), what="the outbox row marked sent")
    assert OutboxMessage.objects.filter(event_type="orders.OrderPlaced.v1").count() == 1
    # ... and the test's own queue received exactly one valid CloudEvent whose data fits the schema.
    messages = received(listener)
    assert len(messages) == 1
    message = messages[0]
    assert message.content_type == CONTENT_TYPE
    assert message.properties["delivery_mode"] == 2
    assert message.properties["user_id"] == "orders"  # RabbitMQ vouches that the orders service published it
    body = json.loads(message.body)
    assert {"specversion", "id", "source", "type", "time", "datacontenttype", "data", "correlationid",
            "causationid"} <= body.keys()  # fmt: skip
    assert body["specversion"] == "1.0" and body["type"] == "orders.OrderPlaced.v1" and body["source"] == "/orders"
    assert body["correlationid"] == str(order.id)
    jsonschema.validate(body["data"], OrderPlaced.contract.json_schema())
    assert body["data"]["orderId"] == str(order.id)
    assert body["data"]["items"] == [{"productId": "P001", "quantity": 2}]
    assert body["data"]["totalAmount"] == "20.00" and body["data"]["currency"] == "USD"
    assert body["data"]["paymentToken"].startswith("sealed:") and "tok_visa" not in str(message.body)
    from_dict(body)


def test_a_duplicate_delivery_has_one_effect(listener, broker_url):
    # Given an order whose OrderPlaced was handled
    factories.product("P002", stock=10)
    order = factories.order(("P002", 3))
    reservation_of(order.id)
    original = received(listener)[0]
    event_id = json.loads(original.body)["id"]
    task_result("inventory.reserve_stock", event_id, "done")

    # When the same event is delivered again
    publish_raw(broker_url, original.body, content_type=CONTENT_TYPE)

    # Then the handler sees it, recognises it, and changes nothing
    task_result("inventory.reserve_stock", event_id, "duplicate")
    assert Product.objects.get(sku="P002").available == 7
    assert InboxMessage.objects.filter(handler="inventory.reserve_stock", event_id=event_id).count() == 1


def test_a_relay_killed_before_marking_rows_sent_causes_no_double_effect(workers):
    # Given the relay is killed, and an order is placed meanwhile
    factories.product("P003", stock=10)
    workers.processes.kill("relay")
    order = factories.order(("P003", 1))
    row = OutboxMessage.objects.get(event_type="orders.OrderPlaced.v1")
    assert row.sent_at is None

    # When a relay comes back, it publishes the waiting row without a manual step
    workers.start_relay(poll=0.5)
    reservation_of(order.id)
    event_id = str(row.event_id)
    task_result("inventory.reserve_stock", event_id, "done")
    # (the saga goes on to ship the stock; once it has, the row sent again below is inventory's only event, so the
    # intake hands it to the handler's own task, whose result says what it did, rather than to a batch)
    wait_for(
        lambda: Reservation.objects.get(order_id=order.id).status == Reservation.Status.COMMITTED,
        what="the order's stock shipped",
    )

    # And when a relay dies after publishing but before marking the row sent, the row goes out again
    OutboxMessage.objects.filter(pk=row.pk).update(sent_at=None)
    task_result("inventory.reserve_stock", event_id, "duplicate")

    # Then the effect happened once
    wait_for(lambda: OutboxMessage.objects.get(pk=row.pk).sent_at is not None, what="the row marked sent again")
    assert Product.objects.get(sku="P003").available == 9
    assert InboxMessage.objects.filter(event_id=event_id, handler="inventory.reserve_stock").count() == 1


def test_a_transient_failure_is_retried_with_backoff_and_the_retries_show_in_the_task_result(listener):
    # Given the demo gateway times out twice for tok_flaky
    factories.product("P006", stock=10)
    order = factories.order(("P006", 1), token="tok_flaky")
    event_id = json.loads(received(listener)[0].body)["id"]

    # Then the authorization succeeds on the third attempt, under one task id, and takes effect once
    result = task_result("payments.authorize_payment", event_id, "done")
    assert result["attempt"] == 3
    assert Payment.objects.get(order_id=order.id).status in TOOK_PAYMENT
    applied = InboxMessage.objects.get(handler="payments.authorize_payment", event_id=event_id)
    assert applied.task_id == handler_by_name("payments.authorize_payment").task_id(event_id)
    authorized = OutboxMessage.objects.filter(correlation_id=str(order.id), event_type="payments.PaymentAuthorized.v1")
    assert authorized.count() == 1
    assert not DeadLetter.objects.exists()


def test_poison_messages_are_dead_lettered_never_loop_and_a_fixed_one_replays(workers, broker_url, tmp_path):
    factories.product("P004", stock=10)
    good_order = str(uuid.uuid4())
    valid = order_placed(event_id=str(uuid.uuid4()), order_id=good_order, sku="P004", payment_token=seal("tok_visa"))

    # When poison arrives: malformed JSON, a wrong schema, an unknown type, and a pickle
    for poison in poison_batch(token=f"poison-{uuid.uuid4().hex[:8]}", event=valid, marker_dir=tmp_path):
        publish_raw(broker_url, poison.body, content_type=poison.content_type)

    # Then each lands in the dead-letter store with its reason, at once and once
    letters = wait_for(
        lambda: (
            (rows := list(DeadLetter.objects.filter(queue="inventory.events").order_by("id")))
            and len(rows) >= 4
            and rows
        ),
        what="four dead letters",
    )
    assert [row.reason for row in letters] == [DeadLetter.Reason.POISON] * 4
    errors = [row.error for row in letters]
    assert "not valid JSON" in errors[0]
    assert "items" in errors[1]
    assert "unknown event type" in errors[2]
    assert "content type 'application/x-python-serialize' is not accepted" in errors[3]
    assert not list(tmp_path.glob("unpickled-*")), "a pickle body was deserialized"
    assert not Reservation.objects.exists()
    assert _queue_depth(broker_url, "inventory.events") == 0
    assert DeadLetter.objects.filter(queue="inventory.events").count() == 4

    # And when the wrong-schema one is fixed and replayed, it goes through
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(valid))
    call_command("dlq", "replay", str(letters[1].pk), "--body-file", str(fixed))
    assert reservation_of(good_order).status == Reservation.Status.HELD  # no order of that id: never confirmed
    replayed = DeadLetter.objects.get(pk=letters[1].pk)
    assert replayed.replay_count == 1 and replayed.replayed_at is not None
    [record] = replayed.replays.all()  # who replayed what: `manage.py dlq` names the OS user
    assert record.actor.startswith("cli") and record.edited and record.outcome == "sent"
    assert json.loads(record.body_after) == valid and record.body_before == letters[1].body


def _queue_depth(broker_url: str, queue: str) -> int:
    vhost = broker_url.rsplit("/", 1)[1]
    api = f"{settings.RABBITMQ_MANAGEMENT_URL}/api/queues/{vhost}/{queue}"

    auth = management_auth(broker_url)

    def settled():
        info = requests.get(api, auth=auth, timeout=5).json()
        return info if info.get("messages") == 0 else None

    with suppress(AssertionError):
        wait_for(settled, timeout=10, what=f"{queue} to drain")
    return requests.get(api, auth=auth, timeout=5).json().get("messages", -1)
