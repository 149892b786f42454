"""The result backend (eventbus.results): django-celery-results' rows, stored in one statement on PostgreSQL."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import current_app, states
from django.db import connection
from django_celery_results.backends.database import DatabaseBackend as LibraryBackend
from django_celery_results.models import TaskResult

from eventbus.results import DatabaseBackend

pytestmark = pytest.mark.django_db

COMPARED = ["status", "result", "traceback", "meta", "content_type", "content_encoding", "periodic_task_name",
            "task_name", "task_args", "task_kwargs", "worker", "date_started"]  # fmt: skip


def request(task_id: str) -> SimpleNamespace:
    return SimpleNamespace(id=task_id, task="inventory.reserve_stock", argsrepr="[orders.OrderPlaced.v1 e1]",
                           kwargsrepr="{}", hostname="inventory@host", children=[], meta={})  # fmt: skip


def row(task_id: str) -> dict:
    return TaskResult.objects.filter(task_id=task_id).values(*COMPARED, "date_created", "date_done").get()


def test_the_backend_is_the_projects():
    assert isinstance(current_app.backend, DatabaseBackend)


@pytest.mark.parametrize("status", [states.SUCCESS, states.STARTED])
def test_a_stored_result_is_the_row_the_library_stores(status):
    ours, library = DatabaseBackend(app=current_app), LibraryBackend(app=current_app)

    ours.store_result("ours", {"outcome": "done", "attempt": 1}, status, request=request("ours"))
    library.store_result("library", {"outcome": "done", "attempt": 1}, status, request=request("library"))

    stored, expected = row("ours"), row("library")
    assert (stored["date_started"] is None) == (expected["date_started"] is None)
    assert {k: stored[k] for k in COMPARED if k != "date_started"} == {
        k: expected[k] for k in COMPARED if k != "date_started"
    }
    assert stored["date_created"] and stored["date_done"]


def test_on_postgresql_a_result_is_one_statement_and_a_later_one_updates_the_row(django_assert_num_queries):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores results as django-celery-results does")
    backend = DatabaseBackend(app=current_app)
    error = ValueError("stock row locked")

    # A first try that failed and will be retried: one statement, no transaction around it
    with django_assert_num_queries(1):
        backend.store_result("t1", error, states.RETRY, traceback="Traceback ...", request=request("t1"))
    first = row("t1")

    # Then the retry that succeeded: the same row, its creation kept, the rest replaced
    with django_assert_num_queries(1):
        backend.store_result("t1", {"outcome": "done", "attempt": 2}, states.SUCCESS, request=request("t1"))
    second = row("t1")
    assert TaskResult.objects.filter(task_id="t1").count() == 1
    assert first["status"] == states.RETRY and "ValueError" in first["result"]
    assert second["status"] == states.SUCCESS and '"attempt": 2' in second["result"]
    assert second["traceback"] is None and second["date_created"] == first["date_created"]
    assert second["date_done"] > first["date_done"]
    assert current_app.AsyncResult("t1").result == {"outcome": "done", "attempt": 2}
