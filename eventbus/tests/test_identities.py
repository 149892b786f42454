"""Broker identities without a broker: what each user may do (the permission regexes, read as RabbitMQ reads
them), where passwords come from, how a message's sender is checked, what `broker_subscriber` refuses. On the
broker: tests/test_forged_messages.py.
"""

from __future__ import annotations

import re
import uuid
from types import SimpleNamespace

import pytest
from celery import Celery, current_app
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.utils import timezone

from eventbus.authenticity import ForgedMessage, check_task_sender, event_forgery
from eventbus.broker_admin import subscription_bindings
from eventbus.contracts import lookup
from eventbus.deadletters import REPLAY_HEADER
from eventbus.handling import run_handler
from eventbus.identities import (
    CELERY_INFRASTRUCTURE,
    OPS,
    pipeline_grants,
    publisher_of,
    publisher_passwords,
    subscriber_grant,
    subscriber_queue_name,
    subscriber_user,
    url_as,
    url_user,
    url_vhost,
)
from eventbus.models import DeadLetter, InboxMessage
from eventbus.passwords import PasswordFile
from eventbus.subscriptions import handler_by_name, subscribers
from eventbus.topology import task_queues
from eventbus.worker import forget_other_queues, sign_task
from inventory.models import Reservation
from tests import factories

SERVICES = ("orders", "inventory", "payments")
EVENT_QUEUES = {"orders": "orders.events-in", "inventory": "inventory.events", "payments": "payments.events"}


def allows(regex: str, name: str) -> bool:
    """RabbitMQ matches a permission regex anywhere in the name (these are anchored)."""
    return re.search(regex, name) is not None


def grants() -> dict[str, object]:
    return {grant.user: grant for grant in pipeline_grants()}


def test_the_pipeline_has_a_user_per_service_and_ops_and_no_other():
    assert list(grants()) == ["inventory", "orders", "payments", "ops"]
    assert {grant.user: grant.tags for grant in pipeline_grants()} == {**dict.fromkeys(SERVICES, ""), OPS: "monitoring"}


def test_a_service_writes_its_own_events_exchange_only_and_ops_none():
    for user, grant in grants().items():
        for producer in SERVICES:
            assert allows(grant.write, f"{producer}.events") == (user == producer), (user, producer)
        assert not allows(grant.write, "orders.events-in")


def test_a_service_reads_its_own_queues_only():
    for user, grant in grants().items():
        for service in SERVICES:
            own = user == service
            for queue in (EVENT_QUEUES[service], f"{service}.tasks", f"{EVENT_QUEUES[service]}.dlq"):
                assert allows(grant.read, queue) == own, (user, queue)
        assert allows(grant.read, "eventbus.tasks") == (user != OPS)  # housekeeping runs on every worker


def test_no_pipeline_user_may_declare_or_delete_the_topology_only_celery_its_own():
    topology = [*EVENT_QUEUES.values(), *(f"{s}.events" for s in SERVICES), *(f"{s}.tasks" for s in SERVICES),
                "eventbus.tasks", "eventbus.dlx", "eventbus.unrouted", "inventory.events.dlq"]  # fmt: skip
    celery = ["celery_delayed_27", "celery_delayed_delivery", "celeryev", "celeryev.5f1c", "celery.pidbox",
              "reply.celery.pidbox", "orders@host.celery.pidbox", "5f1c.reply.celery.pidbox",
              "amq.gen-Jx9"]  # fmt: skip
    for user, grant in grants().items():
        assert not any(allows(grant.configure, name) for name in topology), user
        assert all(allows(grant.configure, name) for name in celery), user
    assert all(any(re.fullmatch(part, name) for part in CELERY_INFRASTRUCTURE) for name in celery)


def test_ops_sends_tasks_to_every_task_queue_and_replays_through_the_default_exchange():
    ops = grants()[OPS]
    assert all(allows(ops.write, queue.exchange.name) for queue in task_queues())
    assert allows(ops.write, "amq.default")
    assert not any(allows(grant.write, "amq.default") for user, grant in grants().items() if user != OPS)


def test_a_subscriber_reads_its_own_queues_and_may_declare_bind_write_or_read_nothing_else():
    grant = subscriber_grant("acme")
    assert grant.user == "sub-acme" and grant.tags == ""
    for name in ("sub-acme.orders", "sub-acme.orders.dlq", "sub-acme.a_b"):
        assert allows(grant.read, name), name
    pipeline = [*EVENT_QUEUES.values(), *(f"{s}.events" for s in SERVICES), *(f"{s}.tasks" for s in SERVICES),
                "eventbus.tasks", "eventbus.dlx", "amq.default", "celeryev.1"]  # fmt: skip
    for name in ("sub-acme", "sub-acmeother.x", "acme.orders", "sub-other.x", *pipeline):
        assert not allows(grant.read, name), name
    # The queues inventory.events and payments.events share their names with those producers' exchanges, and
    # RabbitMQ's permissions cannot tell a queue from an exchange: so no read on any exchange, to bind to it
    for name in ("sub-acme.orders", *pipeline):
        assert not allows(grant.configure, name) and not allows(grant.write, name), name


def test_a_subscribers_queue_is_named_after_it_and_its_dead_letters_cannot_be_another_of_its_queues():
    assert subscriber_queue_name("acme", "orders") == "sub-acme.orders"
    assert subscriber_queue_name("acme", "a_b-1") == "sub-acme.a_b-1"
    for suffix in ("", "x.dlq", "a.b", "Orders", "-x", "x" * 61):
        with pytest.raises(ValueError, match="queue suffix"):
            subscriber_queue_name("acme", suffix)
    with pytest.raises(ValueError, match="subscriber name"):
        subscriber_queue_name("Acme", "orders")


def test_a_subscription_names_event_types_or_families_of_the_published_contracts():
    assert subscription_bindings(["orders.OrderPlaced.v1"]) == {("orders", "order.placed")}
    assert subscription_bindings(["orders.OrderPlaced", "inventory.ProductChanged.v1"]) == {
        ("orders", "order.placed"),
        ("inventory", lookup("inventory.ProductChanged.v1").routing_key),
    }
    for unknown in ("orders.OrderPlaced.v9", "orders.Nope", "orders", "order.placed", ""):
        with pytest.raises(ValueError, match=f"unknown event type '{re.escape(unknown)}'.*orders.OrderPlaced"):
            subscription_bindings(["orders.OrderPlaced", unknown])


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--queue", "orders"], "--queue and --event go together"),
        (["--event", "orders.OrderPlaced"], "--queue and --event go together"),
        (["--unbind"], "--unbind needs --queue and --event"),
        (["--delete", "--queue", "orders", "--event", "orders.OrderPlaced"], "--delete removes the user"),
        (["--queue", "orders.dlq", "--event", "orders.OrderPlaced"], "queue suffix"),
        (["--queue", "orders", "--event", "orders.Nope"], "unknown event type 'orders.Nope'"),
    ],
)
def test_broker_subscriber_refuses_what_it_cannot_do_before_it_calls_the_broker(settings, arguments, error):
    settings.BROKER_ADMIN_URL = "amqp://admin:x@127.0.0.1:1/v"  # nothing listens: any call to it would fail
    settings.RABBITMQ_MANAGEMENT_URL = "http://127.0.0.1:1"
    with pytest.raises(CommandError, match=re.escape(error)):
        call_command("broker_subscriber", "acme", *arguments)


@pytest.mark.parametrize("name", ["", "Acme", "a.b", "a_b", "-a", "x" * 41])
def test_a_subscriber_name_must_be_safe_in_a_queue_name_and_a_regex(name):
    with pytest.raises(ValueError, match="subscriber name"):
        subscriber_user(name)


def test_an_event_type_names_the_one_user_that_may_publish_it():
    assert publisher_of("orders.OrderPlaced.v1") == "orders"
    assert publisher_of("inventory.ProductChanged.v1") == "inventory"
    assert publisher_of("payments.PaymentAuthorized.v1") == "payments"


def test_publisher_credentials_come_from_the_setting_with_escapes_or_the_stacks_password_file(settings, tmp_path):
    settings.EVENTBUS_PUBLISHER_CREDENTIALS = " orders:a%2Cb%3Ac , inventory:pw2,payments:pw3"
    assert publisher_passwords() == {"orders": "a,b:c", "inventory": "pw2", "payments": "pw3"}

    settings.EVENTBUS_PUBLISHER_CREDENTIALS = ""
    settings.BROKER_PASSWORD_FILE = tmp_path / "broker-credentials.json"
    passwords = publisher_passwords()
    assert sorted(passwords) == ["inventory", "orders", "payments"]
    assert passwords["orders"] == PasswordFile(tmp_path / "broker-credentials.json").password("orders")
    assert (tmp_path / "broker-credentials.json").stat().st_mode & 0o777 == 0o600

    settings.BROKER_PASSWORD_FILE = None
    settings.EVENTBUS_PUBLISHER_CREDENTIALS = "orders:pw1,payments:"
    with pytest.raises(ImproperlyConfigured, match="no password for inventory, payments"):
        publisher_passwords()


def test_broker_urls_change_user_on_every_node_and_keep_their_vhost():
    url = "amqp://admin:x@127.0.0.1:5672/test-1;amqp://admin:x@127.0.0.1:5673/test-1"
    moved = url_as(url, "orders", "p@ss/word")
    assert (
        moved == "amqp://orders:p%40ss%2Fword@127.0.0.1:5672/test-1;amqp://orders:p%40ss%2Fword@127.0.0.1:5673/test-1"
    )
    assert url_user(moved) == "orders" and url_user("amqp://127.0.0.1:5672//") is None
    assert url_vhost(moved) == "test-1" and url_vhost("amqp://h:1//") == "/" and url_vhost("amqp://h:1") == "/"


class Received(SimpleNamespace):
    """A message as the intake sees it: properties, headers, body."""


def received(user_id: str | None, *, headers: dict | None = None, body: str = "{}") -> Received:
    return Received(properties={"user_id": user_id} if user_id else {}, headers=headers or {}, body=body)


def test_an_event_is_authentic_only_from_its_producer(settings):
    assert event_forgery(received("orders"), "orders.OrderPlaced.v1") is None
    assert "from 'inventory'" in event_forgery(received("inventory"), "orders.OrderPlaced.v1")
    assert "without an authenticated user_id" in event_forgery(received(None), "orders.OrderPlaced.v1")
    settings.EVENTBUS_VERIFY_PUBLISHER = False
    assert event_forgery(received(None), "orders.OrderPlaced.v1") is None


@pytest.mark.django_db
def test_a_replay_is_authentic_when_the_dead_letter_store_sent_that_very_body():
    body = '{"type": "orders.OrderPlaced.v1"}'
    replayed = DeadLetter.objects.create(reason="poison", queue="inventory.events", body=body, error="x",
                                         replayed_at=timezone.now())  # fmt: skip
    never = DeadLetter.objects.create(reason="poison", queue="inventory.events", body=body, error="x")
    forged = DeadLetter.objects.create(reason="forged", queue="inventory.events", body=body, error="x",
                                       replayed_at=timezone.now())  # fmt: skip

    def check(pk: object, sent: str | bytes = body) -> str | None:
        return event_forgery(received(OPS, headers={REPLAY_HEADER: pk}, body=sent), "orders.OrderPlaced.v1")

    assert check(replayed.pk) is None and check(replayed.pk, body.encode()) is None
    assert check(replayed.pk, body.replace("Placed", "Paid")) is not None  # not the body the store sent
    assert check(never.pk) is not None  # never replayed
    assert check(forged.pk) is not None  # a forgery is never vouched for
    assert check("not-an-id") is not None and check(999_999) is not None


def test_a_handler_task_is_authentic_only_from_its_own_services_user(settings):
    check_task_sender("inventory", {"user_id": "inventory"})
    for properties in ({"user_id": "orders"}, {"user_id": OPS}, {}, None):
        with pytest.raises(ForgedMessage, match="a inventory handler task must come from 'inventory'"):
            check_task_sender("inventory", properties)
    settings.EVENTBUS_VERIFY_PUBLISHER = False
    check_task_sender("inventory", {"user_id": "orders"})


@pytest.mark.django_db
def test_a_handler_task_delivered_from_another_user_is_filed_as_forged_and_has_no_effect():
    # Given an OrderPlaced that inventory would hold stock for
    factories.product("P001", stock=5)
    event = factories.order_placed_event(("P001", 2))
    handler = handler_by_name("inventory.reserve_stock")
    task = current_app.tasks[handler.name]

    # When its task arrives from the orders service's user
    task.push_request(id=str(uuid.uuid4()), retries=0, called_directly=False, properties={"user_id": "orders"})
    try:
        with pytest.raises(ForgedMessage):
            run_handler(task, handler, event)
    finally:
        task.pop_request()

    # Then it is dead-lettered as forged, and nothing was held
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.handler, letter.queue, letter.event_id) == (
        "forged", "inventory.reserve_stock", "inventory.tasks", event["id"]
    )  # fmt: skip
    assert not Reservation.objects.exists() and not InboxMessage.objects.exists()


@pytest.mark.django_db
def test_a_forged_dead_letter_is_never_replayed():
    forged = DeadLetter.objects.create(reason="forged", queue="inventory.events", body="{}", error="from 'ops'")
    with pytest.raises(CommandError, match=f"dead letter #{forged.pk} is forged"):
        call_command("dlq", "replay", str(forged.pk))
    call_command("dlq", "replay", "--all")  # forged ones are not among "all"
    forged.refresh_from_db()
    assert forged.replayed_at is None and forged.replay_count == 0


def test_every_task_message_names_the_broker_user_of_the_process(monkeypatch):
    # (Celery reads the broker URL from CELERY_BROKER_URL ahead of its configuration)
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://payments:x@127.0.0.1:5672/v;amqp://payments:x@h:2/v")
    properties: dict = {}
    sign_task(properties=properties)
    assert properties == {"user_id": "payments"}

    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://127.0.0.1:5672//")
    properties = {}
    sign_task(properties=properties)
    assert properties == {}


def test_a_worker_forgets_the_task_queues_it_does_not_consume():
    # (Celery binds every queue it knows to its delayed-delivery exchange; a service may bind only its own)
    app = Celery(set_as_current=False)
    app.conf.task_queues = task_queues()
    app.amqp.queues.select(["inventory.tasks", "eventbus.tasks"])

    forget_other_queues(sender=SimpleNamespace(app=app))

    assert sorted(app.amqp.queues) == ["eventbus.tasks", "inventory.tasks"]
    assert {s.task_queue for s in subscribers()} - set(app.amqp.queues) == {"orders.tasks", "payments.tasks"}
