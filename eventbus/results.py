"""Celery's result backend: django-celery-results' TaskResult rows, stored in one statement on PostgreSQL.

django-celery-results stores a result with get_or_create and save: a SELECT, then BEGIN, INSERT and COMMIT
(or an UPDATE), four round trips for every task a worker runs. Here it is one `INSERT ... ON CONFLICT
(task_id) DO UPDATE`, with the same columns and values (date_created kept, date_done set, date_started for
STARTED). The rows, the admin and Flower are django-celery-results' own; reads go through it unchanged.
SQLite keeps the library's way: its writers take turns on one lock (orderproj.db.sqlite3), and a statement
outside a transaction there begins deferred.
"""

from __future__ import annotations

from typing import Any

from celery import states
from django.db import connections, router
from django.utils import timezone
from django_celery_results.backends.database import DatabaseBackend as LibraryBackend
from django_celery_results.models import TaskResult


class DatabaseBackend(LibraryBackend):
    """CELERY_RESULT_BACKEND: `eventbus.results:DatabaseBackend`."""

    def _store_result(
        self,
        task_id: str,
        result: Any,
        status: str,
        traceback: str | None = None,
        request: Any = None,
        using: str | None = None,
    ) -> Any:
        database = connections[using or router.db_for_write(TaskResult)]
        if database.vendor != "postgresql":
            return super()._store_result(task_id, result, status, traceback, request, using)
        content_type, content_encoding, encoded = self.encode_content(result)
        meta = {**self._get_meta_from_request(request), "children": self.current_task_children(request)}
        values = {
            "task_id": task_id,
            "status": status,
            "result": encoded,
            "traceback": traceback,
            "meta": self.encode_content(meta)[2],
            "content_type": content_type,
            "content_encoding": content_encoding,
            # As the library has it: these (traceback too, which is None unless results are extended) last.
            **self._get_extended_properties(request, traceback),
        }
        now = timezone.now()
        values["date_done"] = now
        if status == states.STARTED:
            values["date_started"] = now
        upsert(database, values, created=now)
        return encoded


def upsert(database: Any, values: dict[str, Any], *, created: Any) -> None:
    """Insert the TaskResult row of `values`, created at `created`, or update every column of it but task_id
    and date_created when the task has one already."""
    meta = TaskResult._meta
    fields = [meta.get_field(name) for name in values] + [meta.get_field("date_created")]
    params = [field.get_db_prep_save(values.get(field.name, created), connection=database) for field in fields]
    quote = database.ops.quote_name
    task_id, date_created = meta.get_field("task_id").column, meta.get_field("date_created").column
    columns = [field.column for field in fields]
    updates = [f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c not in (task_id, date_created)]
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(map(quote, columns))}) "  # noqa: S608 (names from the model, values as parameters)
        f"VALUES ({', '.join(['%s'] * len(params))}) "
        f"ON CONFLICT ({quote(task_id)}) DO UPDATE SET {', '.join(updates)}"
    )
    with database.cursor() as cursor:
        cursor.execute(sql, params)
