"""Fill a table with hundreds of thousands of rows in one INSERT ... SELECT, on PostgreSQL and SQLite.

Columns are SQL expressions of the row number `n` (or plain values); every other field takes its
model default, so the helper keeps working when a field is added.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection, models


def fill(model: type[models.Model], count: int, **columns: Any) -> None:
    """Insert rows n = 1..count; a keyword's string is SQL in terms of `n`, any other value a constant."""
    names, values, params = [], [], []
    for field in model._meta.concrete_fields:
        if isinstance(columns.get(field.name), str):
            values.append(columns.pop(field.name).replace("%", "%%"))  # plain SQL: no placeholders in it
        elif isinstance(field, models.AutoField | models.BigAutoField) and field.name not in columns:
            continue
        else:
            values.append("%s")
            value = columns.pop(field.name) if field.name in columns else field.get_default()
            params.append(field.get_db_prep_save(value, connection))
        names.append(connection.ops.quote_name(field.column))
    if columns:
        raise ValueError(f"{model.__name__} has no field(s) {', '.join(columns)}")
    insert = f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({', '.join(names)})"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"{insert} SELECT {', '.join(values)} FROM generate_series(1, %s) AS seq(n)", [*params, count]
            )
        else:
            series = "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < %s)"
            cursor.execute(f"{series} {insert} SELECT {', '.join(values)} FROM seq", [count, *params])


def days_before(now: datetime, days: str) -> str:
    """SQL for the moment `days` (an SQL expression, may be fractional) before `now`, as Django stores it."""
    if connection.vendor == "postgresql":
        return f"(TIMESTAMPTZ '{now.isoformat()}' - ({days}) * INTERVAL '1 day')"
    stamp = now.replace(tzinfo=None).isoformat(sep=" ")
    return f"strftime('%Y-%m-%d %H:%M:%f', '{stamp}', '-' || ({days}) || ' days')"


def uuid_of(number: str) -> str:
    """SQL for a UUID unique to the integer expression `number`, in the column type Django uses."""
    if connection.vendor == "postgresql":
        return f"md5(({number})::text)::uuid"
    return f"printf('%032x', {number})"
