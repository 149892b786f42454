"""The health figures against the real management API, with the real workers consuming their event queues."""

import pytest

from eventbus.health import pipeline_health
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
EVENT_QUEUES = ("inventory.events", "payments.events", "orders.events-in")


def test_health_shows_a_consumer_on_every_event_queue(workers, admin_client):
    # Given a worker per service, whose intake consumes its event queue on the run's own vhost
    def consumed() -> dict | None:
        health = pipeline_health()
        assert health.error is None, health.error
        queues = {q.name: q for q in health.queues}
        return queues if all((queues[name].consumers or 0) >= 1 for name in EVENT_QUEUES) else None

    # When the management API has caught up (it samples queues every few seconds)
    queues = wait_for(consumed, timeout=30, interval=1, what="consumers on every event queue")

    # Then every queue of the topology is declared there, and /metrics says so too
    assert all(q.messages is not None for q in queues.values()), [n for n, q in queues.items() if q.messages is None]
    metrics = admin_client.get("/metrics").content.decode().splitlines()
    assert 'orderpipe_up{component="rabbitmq_management"} 1.0' in metrics
    for name in EVENT_QUEUES:
        consumers = next(line for line in metrics if line.startswith(f'orderpipe_queue_consumers{{queue="{name}"}} '))
        assert float(consumers.split()[1]) >= 1
