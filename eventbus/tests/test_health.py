"""The health page and /metrics: access, figures computed from rows, queue figures from a management API."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from celery import current_app
from django.utils import timezone

from eventbus.health import pipeline_health
from eventbus.models import DeadLetter, InboxMessage, OutboxMessage
from orders.models import Order
from tests import factories

pytestmark = pytest.mark.django_db

CLOSED_PORT_URL = "http://127.0.0.1:9"
INVENTORY_EVENTS = {
    "name": "inventory.events",
    "messages": 3,
    "messages_ready": 2,
    "messages_unacknowledged": 1,
    "consumers": 1,
    "message_stats": {"publish_details": {"rate": 2.5}, "deliver_get_details": {"rate": 2.0}, "ack_details": {}},
}


@dataclass
class FakeManagement:
    """A RabbitMQ management API answering GET /api/queues/<vhost> with `queues`; it records each request."""

    url: str
    queues: list[dict] = field(default_factory=lambda: [INVENTORY_EVENTS])
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Authorization header)


@pytest.fixture
def management(settings) -> Iterator[FakeManagement]:
    fake = FakeManagement(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests.append((self.path, self.headers.get("Authorization", "")))
            body = json.dumps(fake.queues).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_port}"
    settings.RABBITMQ_MANAGEMENT_URL = fake.url
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def broker_on_default_vhost(monkeypatch) -> None:
    """Integration tests move the Celery app to a vhost of their own; these tests pin it."""
    pin_broker(monkeypatch, "amqp://guest:guest@127.0.0.1:5672//")


def pin_broker(monkeypatch, url: str) -> None:
    # Celery reads CELERY_BROKER_URL from the environment ahead of its configuration (make test sets it).
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    monkeypatch.setattr(current_app.conf, "broker_url", url)


def order(status: str) -> Order:
    return Order.objects.create(customer_email="a@example.com", status=status, total_amount=Decimal("10.00"))


def dead_letter(*, replayed: bool) -> DeadLetter:
    return DeadLetter.objects.create(
        reason=DeadLetter.Reason.POISON, queue="inventory.events", body="{", error="bad JSON",
        replayed_at=timezone.now() if replayed else None,
    )  # fmt: skip


@pytest.fixture
def rows() -> None:
    """Orders: two pending, one cancelled. Outbox: one sent, two waiting (the oldest 5 min). Two dead letters."""
    order(Order.Status.PENDING)
    order(Order.Status.PENDING)
    order(Order.Status.CANCELLED)
    now = timezone.now()
    factories.outbox_rows("order.placed", created_at=now - timedelta(minutes=10), sent_at=now)
    factories.outbox_rows("order.placed", created_at=now - timedelta(minutes=5))
    factories.outbox_rows("order.placed", created_at=now - timedelta(minutes=1))
    dead_letter(replayed=True)
    dead_letter(replayed=False)
    InboxMessage.objects.create(handler="inventory.reserve_stock", event_id=uuid.uuid4(), event_type="x")


def test_anonymous_users_are_sent_to_the_admin_login(client):
    response = client.get("/ops/health/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/ops/health/"


def test_users_who_are_not_staff_are_sent_to_the_admin_login(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("clerk", password="x"))

    assert client.get("/ops/health/").status_code == 302


def test_staff_see_every_queue_and_figure_in_the_admin_look(admin_client, management, broker_on_default_vhost, rows):
    response = admin_client.get("/ops/health/")

    assert response.status_code == 200
    assert response.templates[0].name == "eventbus/health.html"
    assert "admin/base_site.html" in [t.name for t in response.templates]
    health = response.context["health"]
    assert health.error is None
    names = [q.name for q in health.queues]
    for name in ("inventory.events", "inventory.events.dlq", "payments.events", "orders.events-in", "orders.tasks",
                 "orders.tasks.dlq", "eventbus.tasks", "eventbus.unrouted"):  # fmt: skip
        assert name in names
        assert f'<th scope="row">{name}</th>' in response.content.decode()
    assert "not declared on this vhost" in response.content.decode()


def test_orders_outbox_and_dead_letters_are_counted_from_the_rows(management, broker_on_default_vhost, rows):
    health = pipeline_health()

    assert health.figures["orders"] == {"pending": 2, "confirmed": 0, "cancelled": 1}
    assert health.outbox.pending == 2
    assert 300 <= health.outbox.lag_seconds < 330
    assert health.outbox.last_sent_at == OutboxMessage.objects.get(sent_at__isnull=False).sent_at
    assert (health.dead_letters.total, health.dead_letters.unreplayed) == (2, 1)
    assert health.last_event_recorded_at == OutboxMessage.objects.order_by("-created_at")[0].created_at
    assert health.last_event_handled_at == InboxMessage.objects.get().processed_at


def test_an_empty_pipeline_has_no_lag_and_zero_orders_of_every_status(management, broker_on_default_vhost):
    health = pipeline_health()

    assert health.figures["orders"] == {"pending": 0, "confirmed": 0, "cancelled": 0}
    assert (health.outbox.pending, health.outbox.lag_seconds, health.outbox.last_sent_at) == (0, 0.0, None)
    assert health.last_event_recorded_at is None and health.last_event_handled_at is None


@pytest.mark.parametrize(
    ("broker_url", "path", "user", "password"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "/api/queues/%2F", "guest", "guest"),
        ("amqp://ops:s%40cret@rabbit:5672/shop", "/api/queues/shop", "ops", "s@cret"),
    ],
)
def test_queue_figures_come_from_the_vhost_and_user_of_the_celery_broker(
    management, monkeypatch, broker_url, path, user, password
):
    pin_broker(monkeypatch, broker_url)

    queues = {q.name: q for q in pipeline_health().queues}

    (requested, authorization), *_ = management.requests
    assert requested.split("?")[0] == path
    assert authorization == "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    inventory = queues["inventory.events"]
    assert (inventory.messages, inventory.messages_ready, inventory.messages_unacknowledged) == (3, 2, 1)
    assert (inventory.consumers, inventory.publish_rate, inventory.deliver_rate, inventory.ack_rate) == (1, 2.5, 2.0, 0)
    assert queues["payments.events"].messages is None  # not declared on that vhost


def test_the_json_variant_carries_the_same_figures(admin_client, management, broker_on_default_vhost, rows):
    data = admin_client.get("/ops/health/", {"format": "json"}).json()

    assert data["error"] is None
    assert data["orders"] == {"pending": 2, "confirmed": 0, "cancelled": 1}
    assert data["outbox"]["pending"] == 2 and data["dead_letters"] == {"total": 2, "unreplayed": 1}
    inventory = next(q for q in data["queues"] if q["name"] == "inventory.events")
    assert (inventory["consumers"], inventory["publish_rate"]) == (1, 2.5)


def test_metrics_are_for_staff_or_the_bearer_token_only(client, admin_client, settings, management):
    settings.METRICS_TOKEN = "scrape-me"

    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-me").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200
    assert admin_client.get("/metrics").status_code == 200


def test_without_a_configured_token_no_bearer_header_opens_the_metrics(client, settings, management):
    settings.METRICS_TOKEN = ""

    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer").status_code == 403


def test_metrics_expose_the_health_figures_in_prometheus_text_format(
    admin_client, management, broker_on_default_vhost, rows
):
    response = admin_client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = response.content.decode().splitlines()
    for expected in (
        'orderpipe_up{component="rabbitmq_management"} 1.0',
        'orderpipe_queue_messages{queue="inventory.events"} 3.0',
        'orderpipe_queue_messages_ready{queue="inventory.events"} 2.0',
        'orderpipe_queue_consumers{queue="inventory.events"} 1.0',
        'orderpipe_queue_publish_rate{queue="inventory.events"} 2.5',
        "orderpipe_outbox_pending 2.0",
        'orderpipe_dead_letters{state="all"} 2.0',
        'orderpipe_dead_letters{state="unreplayed"} 1.0',
        'orderpipe_orders{status="pending"} 2.0',
        'orderpipe_orders{status="confirmed"} 0.0',
        'orderpipe_orders{status="cancelled"} 1.0',
    ):
        assert expected in lines
    lag = next(line for line in lines if line.startswith("orderpipe_outbox_lag_seconds "))
    assert 300 <= float(lag.split()[1]) < 330
    assert any(line.startswith('orderpipe_last_event_timestamp_seconds{stage="recorded"} ') for line in lines)
    assert any(line.startswith('orderpipe_last_event_timestamp_seconds{stage="handled"} ') for line in lines)
    assert not any(line.startswith('orderpipe_queue_messages{queue="payments.events"}') for line in lines)


def test_an_unreachable_management_api_is_reported_not_raised(admin_client, settings, rows):
    settings.RABBITMQ_MANAGEMENT_URL = CLOSED_PORT_URL

    page = admin_client.get("/ops/health/")
    data = admin_client.get("/ops/health/", {"format": "json"}).json()
    metrics = admin_client.get("/metrics").content.decode().splitlines()

    assert page.status_code == 200
    assert "Queue figures unavailable" in page.content.decode()
    assert data["error"].startswith("RabbitMQ management API: ")
    assert all(q["messages"] is None and q["consumers"] is None for q in data["queues"])
    assert data["orders"]["pending"] == 2  # the database figures are still there
    assert 'orderpipe_up{component="rabbitmq_management"} 0.0' in metrics
    assert not any(line.startswith("orderpipe_queue_messages{") for line in metrics)
    assert "orderpipe_outbox_pending 2.0" in metrics
