"""Redis on the health page and /metrics: down within seconds when it is closed or hung, up when it answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from eventbus.health import pipeline_health, redis_health

pytestmark = pytest.mark.django_db

CLOSED_PORT_REDIS = "redis://127.0.0.1:9/0"
HEALTH_BOUND = 10.0  # seconds: a Redis outage shows within this


@pytest.fixture
def closed_management(settings) -> None:
    """The management API refuses connections at once: these tests are about Redis."""
    settings.RABBITMQ_MANAGEMENT_URL = "http://127.0.0.1:9"


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """A Redis URL whose server takes the connection and never answers (a stopped or wedged Redis)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


def test_a_closed_redis_port_is_reported_down_within_the_bound(settings, closed_management):
    settings.REDIS_URL = CLOSED_PORT_REDIS

    started = time.monotonic()
    health = pipeline_health()

    assert time.monotonic() - started < HEALTH_BOUND
    assert health.redis.up is False
    assert "Redis" in health.redis.error and "127.0.0.1:9" in health.redis.error


def test_a_redis_that_never_answers_is_reported_down_in_under_a_second(settings, hung_redis):
    settings.REDIS_URL = hung_redis

    started = time.monotonic()
    health = redis_health()

    assert time.monotonic() - started < 1.0
    assert health.up is False and "Timeout" in health.error


def test_a_redis_that_answers_is_reported_up(closed_management):
    health = pipeline_health()

    assert health.redis.up is True and health.redis.error is None


def test_the_page_json_and_metrics_say_redis_is_down(admin_client, settings, closed_management):
    settings.REDIS_URL = CLOSED_PORT_REDIS

    page = admin_client.get("/ops/health/").content.decode()
    data = admin_client.get("/ops/health/", {"format": "json"}).json()
    metrics = admin_client.get("/metrics").content.decode().splitlines()

    assert "Redis is down" in page
    assert data["redis"]["up"] is False and "127.0.0.1:9" in data["redis"]["error"]
    assert 'orderpipe_up{component="redis"} 0.0' in metrics


def test_metrics_say_redis_is_up_when_it_answers(admin_client, closed_management):
    metrics = admin_client.get("/metrics").content.decode().splitlines()

    assert 'orderpipe_up{component="redis"} 1.0' in metrics
    assert 'orderpipe_up{component="rabbitmq_management"} 0.0' in metrics


def test_liveness_stays_ok_while_redis_is_down(client, settings):
    # /healthz says the web process answers; what it depends on is the health page's business.
    settings.REDIS_URL = CLOSED_PORT_REDIS

    assert client.get("/healthz").json() == {"status": "ok"}
