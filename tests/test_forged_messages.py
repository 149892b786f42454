"""Trust on the wire, on the real broker with the real workers: only a service publishes its own events, only a
service's own worker sends its handler tasks, and a third party's subscriber reads the queues the administrator
bound for it only.

Each forgery below is either refused by RabbitMQ (no such user, no write permission, a `user_id` that is not
the connection's) or reaches a queue and is dead-lettered as `forged` there, without any effect.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from urllib.parse import quote

import amqp
import pytest
import requests
from celery import current_app
from django.core.management import CommandError, call_command
from kombu import Connection, Queue
from kombu.transport.native_delayed_delivery import calculate_routing_key

from eventbus.broker_admin import ManagementApi, broker_setup, subscriber_create
from eventbus.contracts import EventData
from eventbus.envelope import CONTENT_TYPE, new_event
from eventbus.identities import OPS, Grant, broker_password, subscriber_grant, url_as
from eventbus.models import DeadLetter, InboxMessage
from eventbus.sealing import seal
from inventory.events import ProductChanged
from inventory.models import Product, Reservation
from inventory.services import stock_reserve
from orders.events import OrderConfirmed, OrderItem, OrderPlaced
from orders.models import CatalogProduct, Order, OrderLine
from payments.events import PaymentAuthorized
from payments.models import Payment
from tests import factories
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def user_url(broker_url: str, user: str) -> str:
    """`broker_url`'s vhost, logged in as one of the pipeline's users."""
    return url_as(broker_url, user, broker_password(user))


def publish(
    url: str,
    data: EventData,
    *,
    exchange: str | None = None,
    routing_key: str | None = None,
    user_id: str | None = None,
) -> str:
    """Publish a well-formed CloudEvent carrying `data`, by default where its producer publishes it, confirmed;
    return its id. Raises what the broker answers: a refused login, a refused publish."""
    contract = type(data).contract
    event = new_event(data)
    with Connection(url, transport_options={"confirm_publish": True}) as connection:
        connection.ensure_connection(max_retries=1)
        connection.Producer().publish(
            event.to_json(),
            exchange=exchange or f"{contract.producer}.events",
            routing_key=routing_key or contract.routing_key,
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            retry=False,
            **({"user_id": user_id} if user_id else {}),
        )
    return event.id


@dataclass
class Victims:
    """A pending order whose stock is held and whose payment is not authorized yet, a priced product, and the
    four events an attacker would forge about them."""

    order: Order
    events: dict[str, EventData]


@pytest.fixture
def victims() -> Victims:
    factories.product("P001", price="10.00", stock=10)
    order = Order.objects.create(
        customer_email="a@example.com", total_amount=Decimal("20.00"), currency="USD", stock_leg=Order.StockLeg.RESERVED
    )
    OrderLine.objects.create(order=order, product_id="P001", quantity=2, unit_price=Decimal("10.00"))
    stock_reserve(order_id=order.id, lines=[("P001", 2)])
    now = datetime.now(UTC)
    items = [OrderItem(product_id="P001", quantity=2)]
    return Victims(
        order=order,
        events={
            "PaymentAuthorized": PaymentAuthorized(
                order_id=order.id, payment_id=uuid.uuid4(), amount="20.00", currency="USD"
            ),
            "OrderPlaced": OrderPlaced(
                order_id=uuid.uuid4(),
                items=[OrderItem(product_id="P001", quantity=5)],
                total_amount="99999.00",
                currency="USD",
                timestamp=now,
                payment_token=seal("tok_visa"),
            ),
            "ProductChanged": ProductChanged(
                product_id="P001", name="Product P001", price="0.01", currency="USD", revision=99999
            ),
            "OrderConfirmed": OrderConfirmed(order_id=order.id, items=items, total_amount="20.00", currency="USD"),
        },
    )


# A service that is not the event's producer, and a route of its own exchange that one of the pipeline's queues
# is bound to (orders.events-in): that is where it could smuggle the event in with its own identity.
OTHER_SERVICE = {
    "PaymentAuthorized": "inventory",
    "OrderPlaced": "payments",
    "ProductChanged": "payments",
    "OrderConfirmed": "inventory",
}
OWN_ROUTE = {
    "inventory": ("inventory.events", "inventory.reserved"),
    "payments": ("payments.events", "payment.authorized"),
}
# The queues each event reaches when it is published where its producer publishes it.
CONSUMERS = {
    "PaymentAuthorized": {"orders.events-in"},
    "OrderPlaced": {"inventory.events", "payments.events"},
    "ProductChanged": {"orders.events-in"},
    "OrderConfirmed": {"inventory.events", "payments.events"},
}


def test_forged_events_are_refused_by_the_broker_or_dead_lettered_and_change_nothing(workers, broker_url, victims):
    attacker = subscriber_create(broker_url, "attacker")
    expected: dict[str, set[str]] = {}  # forged event id -> the queues that must file it as forged

    for name, data in victims.events.items():
        producer = type(data).contract.producer
        other = OTHER_SERVICE[name]

        # As guest: RabbitMQ knows no such user (devstack deleted it)
        with pytest.raises(amqp.exceptions.AccessRefused, match="ACCESS_REFUSED"):
            publish(url_as(broker_url, "guest", "guest"), data)

        # As another service, on the producer's exchange: it has no write permission there
        with pytest.raises(amqp.exceptions.AccessRefused, match=f"exchange '{producer}.events'"):
            publish(user_url(broker_url, other), data, user_id=other)

        # As a subscribe-only principal: it writes no exchange at all
        with pytest.raises(amqp.exceptions.AccessRefused, match="ACCESS_REFUSED"):
            publish(attacker, data)

        # With a forged user_id: another service claiming to be the producer, on its own exchange
        exchange, key = OWN_ROUTE[other]
        with pytest.raises(amqp.exceptions.PreconditionFailed, match=f"user_id property set to '{producer}'"):
            publish(user_url(broker_url, other), data, exchange=exchange, routing_key=key, user_id=producer)

        # As another service under its own name, smuggled through its own exchange: delivered, then dead-lettered
        expected[publish(user_url(broker_url, other), data, exchange=exchange, routing_key=key, user_id=other)] = {
            "orders.events-in"
        }
        # By a user that may write the producer's exchange but is not the producer (the administrator), with no
        # user_id: delivered to every queue bound for it, and dead-lettered there
        expected[publish(broker_url, data)] = CONSUMERS[name]

    # Then each delivered forgery is filed as forged by every queue that got it ...
    def filed() -> dict[str, set[str]] | None:
        rows = DeadLetter.objects.filter(event_id__in=expected, reason=DeadLetter.Reason.FORGED)
        found: dict[str, set[str]] = {}
        for event_id, queue in rows.values_list("event_id", "queue"):
            found.setdefault(event_id, set()).add(queue)
        return found if found == expected else None

    wait_for(filed, timeout=60, what="every delivered forgery dead-lettered as forged")
    errors = DeadLetter.objects.filter(event_id__in=expected).values_list("error", flat=True)
    assert all("published by" in error for error in errors), list(errors)

    # ... no handler ran on any of them, and nothing changed
    assert not InboxMessage.objects.filter(event_id__in=expected).exists()
    order = Order.objects.get(pk=victims.order.pk)
    assert (order.status, order.stock_leg, order.payment_leg) == ("pending", "reserved", "pending")
    assert list(Reservation.objects.values_list("order_id", "status")) == [(order.id, Reservation.Status.HELD)]
    assert Product.objects.get(sku="P001").stock_reserved == 2
    assert not Payment.objects.exists()
    catalogue = CatalogProduct.objects.get(sku="P001")
    assert (catalogue.price, catalogue.revision) == (Decimal("10.00"), 1)


def task_message(task_name: str, event: dict) -> tuple[dict, dict, tuple]:
    """A Celery task message (headers, properties, body) that runs `task_name` on `event`, as the intake sends."""
    headers, properties, body, _ = current_app.amqp.as_task_v2(str(uuid.uuid4()), task_name, args=[event])
    return headers, properties, body


def inject(url: str, user: str, event: dict, *, exchange: str, routing_key: str) -> None:
    headers, properties, body = task_message("inventory.reserve_stock", event)
    with Connection(url, transport_options={"confirm_publish": True}) as connection:
        connection.Producer().publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            serializer="json",
            retry=False,
            user_id=user,
            **properties,
        )


def test_a_handler_task_injected_by_another_user_has_no_effect_and_is_filed_as_forged(workers, broker_url):
    # Given OrderPlaced events for orders that do not exist, which inventory would hold stock for
    factories.product("P002", stock=10)

    placed = partial(factories.order_placed_event, ("P002", 3), total="30.00")
    through_delay, direct = placed(), placed()

    # When another service sends inventory's handler task through Celery's delayed delivery, which every
    # service may write (its retries go that way) and which reaches every task queue ...
    inject(
        user_url(broker_url, "orders"),
        "orders",
        through_delay,
        exchange="celery_delayed_27",
        routing_key=calculate_routing_key(1, "inventory.tasks"),
    )
    # ... and ops (web, beat, Flower), which may send tasks to any task queue, sends it straight there
    inject(user_url(broker_url, OPS), OPS, direct, exchange="inventory.tasks", routing_key="inventory.tasks")
    # (a third party's subscriber may do neither)
    attacker = subscriber_create(broker_url, "attacker")
    for exchange, key in (
        ("celery_delayed_27", calculate_routing_key(1, "inventory.tasks")),
        ("inventory.tasks", "inventory.tasks"),
    ):
        with pytest.raises(amqp.exceptions.AccessRefused):
            inject(attacker, "sub-attacker", placed(), exchange=exchange, routing_key=key)

    # Then inventory's worker refuses both: each is filed as forged, and no stock is held
    ids = [through_delay["id"], direct["id"]]
    letters = wait_for(
        lambda: (rows := list(DeadLetter.objects.filter(event_id__in=ids))) and len(rows) == 2 and rows,
        timeout=60,
        what="both injected tasks dead-lettered",
    )
    assert {(row.reason, row.handler, row.queue) for row in letters} == {
        (DeadLetter.Reason.FORGED, "inventory.reserve_stock", "inventory.tasks")
    }
    assert sorted(row.error.split(":", 1)[0] for row in letters) == ["ForgedMessage", "ForgedMessage"]
    assert not Reservation.objects.exists()
    assert not InboxMessage.objects.filter(event_id__in=ids).exists()
    assert Product.objects.get(sku="P002").stock_reserved == 0


def subscriber(*arguments: str) -> list[str]:
    """`manage.py broker_subscriber` with `arguments`; the lines it prints."""
    out = io.StringIO()
    call_command("broker_subscriber", *arguments, stdout=out)
    return out.getvalue().splitlines()


class Listener:
    """A third party's consumer: kombu, on a queue the administrator declared and bound (so it declares nothing)."""

    def __init__(self, url: str, queue: str) -> None:
        self.connection = Connection(url)
        self.events: list[dict] = []
        self.consumer = self.connection.Consumer(Queue(queue, no_declare=True), on_message=self._received)
        self.consumer.consume()

    def _received(self, message) -> None:
        assert message.properties["user_id"] == "orders"  # the producer, as RabbitMQ vouches
        self.events.append(json.loads(message.body))
        message.ack()

    def wait(self, event_type: str, order: Order) -> list[str]:
        """Consume until `event_type` of `order` arrives; the types of what this order's events it got so far."""

        def arrived() -> list[str] | None:
            with suppress(TimeoutError):
                self.connection.drain_events(timeout=0.2)
            mine = [e["type"] for e in self.events if e["data"]["orderId"] == str(order.id)]
            return mine if event_type in mine else None

        return wait_for(arrived, timeout=60, interval=0, what=f"{event_type} on the subscriber's queue")

    def close(self) -> None:
        self.connection.release()


def test_a_subscriber_reads_the_queue_the_administrator_bound_for_it_and_nothing_else(workers, broker_url, settings):
    # Given a subscriber (users are the broker's: a name of this test's own) whose queue the administrator
    # declares and binds for OrderPlaced (every version)
    settings.BROKER_ADMIN_URL = broker_url
    name = f"acme-{uuid.uuid4().hex[:8]}"
    user, queue = f"sub-{name}", f"sub-{name}.orders"
    url, bound = subscriber(name, "--queue", "orders", "--event", "orders.OrderPlaced")
    assert url.startswith(f"amqp://{user}:")
    assert bound == f"{queue} is bound to: orders.events order.placed"
    # and, run again, for OrderConfirmed too: the binding is added, the user keeps its password
    assert subscriber(name, "--queue", "orders", "--event", "orders.OrderConfirmed.v1") == [
        f"{queue} is bound to: orders.events order.confirmed, orders.events order.placed"
    ]

    # When the relay publishes an order's events, a plain kombu consumer reads them from that queue
    listener = Listener(url, queue)
    try:
        factories.product("P003", stock=5)
        order = factories.order(("P003", 1))
        assert listener.wait("orders.OrderConfirmed.v1", order) == ["orders.OrderPlaced.v1", "orders.OrderConfirmed.v1"]

        # And once OrderPlaced is unbound, only OrderConfirmed comes (OrderPlaced is published before it)
        assert subscriber(name, "--queue", "orders", "--event", "orders.OrderPlaced.v1", "--unbind") == [
            f"{queue} is bound to: orders.events order.confirmed"
        ]
        factories.product("P005", stock=5)
        later = factories.order(("P005", 1))
        assert listener.wait("orders.OrderConfirmed.v1", later) == ["orders.OrderConfirmed.v1"]
    finally:
        listener.close()

    # But it may not read a queue of the pipeline: not even inventory.events or payments.events, which share their
    # names with those producers' exchanges (each refusal closes the channel it happened on)
    with Connection(url) as connection:
        for pipeline in ("inventory.events", "payments.events", "orders.events-in", "orders.tasks", "inventory.tasks"):
            with pytest.raises(amqp.exceptions.AccessRefused, match=f"queue '{pipeline}'"):
                connection.channel().basic_get(pipeline)
            with pytest.raises(amqp.exceptions.AccessRefused, match=f"queue '{pipeline}'"):
                connection.channel().basic_consume(pipeline, callback=lambda message: None)
        # nor bind its queue itself, to any exchange
        for exchange in ("orders.events", "inventory.events", "payments.events"):
            with pytest.raises(amqp.exceptions.AccessRefused, match="ACCESS_REFUSED"):
                connection.channel().queue_bind(queue, exchange, "#")
        # nor publish to any exchange, the default one (which routes to a queue by its name) included
        for exchange in ("orders.events", "inventory.events", "payments.events", ""):
            channel = connection.channel()
            channel.basic_publish(amqp.Message(b"{}"), exchange=exchange, routing_key="inventory.events")
            with pytest.raises(amqp.exceptions.AccessRefused, match=f"exchange '{exchange or 'amq.default'}'"):
                channel.basic_qos(0, 1, False)  # a round trip: the refusal of the publish arrives first
        # nor declare a queue, even one of its own name
        for other in (name, f"{user}.other", "inventory.events"):
            with pytest.raises(amqp.exceptions.AccessRefused, match=f"queue '{re.escape(other)}'"):
                connection.channel().queue_declare(other, durable=True, auto_delete=False)

    # And once deleted, it cannot log in any more, and its queues are gone with it
    assert subscriber(name, "--delete") == [f"deleted the broker user {user} and its queues: {queue}, {queue}.dlq"]
    with pytest.raises(amqp.exceptions.AccessRefused), Connection(url) as connection:
        connection.ensure_connection(max_retries=1)
    assert not [other for other in ManagementApi(broker_url).queues() if other.startswith(f"{user}.")]


def test_an_unknown_event_type_creates_no_subscriber_and_no_queue(broker_url, settings):
    settings.BROKER_ADMIN_URL = broker_url
    name = f"newbie-{uuid.uuid4().hex[:8]}"
    with pytest.raises(CommandError, match=r"unknown event type 'orders\.OrderShipped\.v1'"):
        subscriber(name, "--queue", "orders", "--event", "orders.OrderPlaced", "--event", "orders.OrderShipped.v1")
    api = ManagementApi(broker_url)
    assert not api.has_user(f"sub-{name}")
    assert not [queue for queue in api.queues() if queue.startswith(f"sub-{name}")]


def test_broker_setup_takes_a_subscriber_created_under_the_old_grant_down_to_its_own_queues(broker_url):
    # Given a subscriber that may read (so bind to) the events exchanges, and so the queues of the same names
    api = ManagementApi(broker_url)
    legacy = Grant(user="sub-legacy", tags="", configure=r"^sub\-legacy\..+$", write=r"^sub\-legacy\..+$",
                   read=r"^(sub\-legacy\..+|inventory\.events|orders\.events|payments\.events)$")  # fmt: skip
    api.grant(legacy, "pw")
    try:
        # When broker_setup runs (every deployment does)
        broker_setup(broker_url, current_app)

        # Then it has the current grant, and keeps its password
        permissions = requests.get(
            f"{api.base}/permissions/{quote(api.vhost, safe='')}/sub-legacy", auth=api.auth, timeout=10
        ).json()
        current = subscriber_grant("legacy")
        assert (permissions["configure"], permissions["write"], permissions["read"]) == (
            current.configure, current.write, current.read
        )  # fmt: skip
        with (
            Connection(url_as(broker_url, "sub-legacy", "pw")) as connection,
            pytest.raises(amqp.exceptions.AccessRefused, match=r"queue 'inventory\.events'"),
        ):
            connection.channel().basic_get("inventory.events")
    finally:
        api.delete_user("sub-legacy")


def test_broker_setup_is_idempotent_and_grants_what_the_processes_need(workers, broker_url):
    # Running it again (every start of a local stack does) changes nothing the running workers rely on
    grants = broker_setup(broker_url, current_app)
    assert [grant.user for grant in grants] == ["inventory", "orders", "payments", "ops"]
    factories.product("P004", stock=5)
    order = factories.order(("P004", 1), token="tok_flaky")
    # a retried authorization (delayed delivery) and the whole saga, each step as its own service
    wait_for(lambda: Order.objects.get(pk=order.pk).status == "confirmed", timeout=60, what="the order confirmed")
    assert not DeadLetter.objects.exists()
