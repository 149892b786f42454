"""Session fixtures: a per-run RabbitMQ vhost set up as a deployment's, and the pipeline's real processes on
it, each as its own broker user, started by devstack. The test process itself is the broker's administrator."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest

from devstack import pipeline
from devstack.stack import Stack, expected_consumers
from eventbus.broker_admin import broker_setup
from tests.harness import database_url, process_stack, temporary_vhost, wait_settled

WORKER_OPTIONS = {"extra": ("--without-gossip", "--without-mingle")}


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """The administrator's URL on a vhost of this run's own, with the pipeline's users, their permissions and
    the topology on it (`manage.py broker_setup`'s work); the test process's Celery app uses it too."""
    from orderproj.celery import app

    with temporary_vhost() as url:
        # Celery reads CELERY_BROKER_URL from the environment ahead of its configuration; set both
        # before the app opens its first connection, so every producer uses the vhost.
        os.environ["CELERY_BROKER_URL"] = url
        app.conf.broker_url = url
        broker_setup(url, app)
        yield url


@pytest.fixture(scope="session")
def stack_env(broker_url: str, django_db_setup, django_db_blocker) -> dict[str, str]:
    """What child processes need beyond the stack's own variables: the run's vhost, test database and cache, and the
    directory of the test process's metrics, if it has one (they add to what /metrics shows in the tests)."""
    from django.conf import settings
    from django.db import connection

    from eventbus.metrics import DIRECTORY

    with django_db_blocker.unblock():
        url = database_url(connection.settings_dict)
    return {
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": url,
        "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
        "RABBITMQ_MANAGEMENT_URL": settings.RABBITMQ_MANAGEMENT_URL,
        **({"PROMETHEUS_MULTIPROC_DIR": DIRECTORY} if DIRECTORY else {}),
    }


@pytest.fixture(scope="session")
def workers(stack_env: dict[str, str], broker_url: str) -> Iterator[Stack]:
    """One real Celery worker process per service, consuming its queues on the test vhost, and the relay."""
    stack = process_stack(stack_env)
    try:
        services = [svc.name for svc in pipeline.services()]
        for name in services:
            stack.start_worker(name, name=f"{name}-test", **WORKER_OPTIONS)
        stack.wait_consuming(expected_consumers(services), broker_url=broker_url)
        stack.start_relay(poll=0.5)
        yield stack
    finally:
        stack.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Before a test that ran on the suite's stack has its database emptied, the stack finishes that test's work."""
    marker = item.get_closest_marker("django_db")
    if marker and marker.kwargs.get("transaction") and "workers" in getattr(item, "fixturenames", ()):
        try:
            wait_settled(os.environ["CELERY_BROKER_URL"])
        except Exception as error:  # the teardown itself must still run
            warnings.warn(f"could not tell whether the stack had settled: {error!r}", stacklevel=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart the broker run last, so that they cannot disturb the others."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)
