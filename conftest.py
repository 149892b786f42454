"""Session fixtures: a per-run RabbitMQ vhost and real Celery worker processes on it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import ProcessGroup, database_url, temporary_vhost, wait_for_workers

SERVICE_QUEUES = {
    "orders": "orders.tasks,eventbus.tasks",
    "inventory": "inventory.tasks",
    "payments": "payments.tasks",
}


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """A broker URL on a vhost of this run's own; the test process's Celery app uses it too."""
    from orderproj.celery import app

    with temporary_vhost() as url:
        # Celery reads CELERY_BROKER_URL from the environment ahead of its configuration; set both
        # before the app opens its first connection, so every producer uses the vhost.
        os.environ["CELERY_BROKER_URL"] = url
        app.conf.broker_url = url
        yield url


@pytest.fixture(scope="session")
def stack_env(broker_url: str, django_db_setup, django_db_blocker) -> dict[str, str]:
    """Environment for child processes: the same broker vhost, test database and settings."""
    from django.conf import settings
    from django.db import connection

    with django_db_blocker.unblock():
        url = database_url(connection.settings_dict)
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "orderproj.settings.test",
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": url,
        "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
        "RABBITMQ_MANAGEMENT_URL": settings.RABBITMQ_MANAGEMENT_URL,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def workers(stack_env: dict[str, str]) -> Iterator[ProcessGroup]:
    """One real Celery worker process per service, consuming its queues on the test vhost, and the relay."""
    from orderproj.celery import app

    group = ProcessGroup(env=stack_env)
    try:
        for service, queues in SERVICE_QUEUES.items():
            group.start_worker(service, queues, concurrency=2)
        wait_for_workers(app, [f"{service}-test" for service in SERVICE_QUEUES], group)
        group.start_relay()
        yield group
    finally:
        group.stop_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart the broker run last, so that they cannot disturb the others."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)
