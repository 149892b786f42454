"""Rows a batch's handlers lock, read once for the whole batch.

Each handler locks the row it changes (the order, the reservation, the payment) with a SELECT ... FOR UPDATE
of its own: a batch of thirty events made thirty such statements, and each cost a worker several times the
CPU it cost the database (docs/benchmark.md). A subscriber names those rows (eventbus.subscriptions.Preload);
a batch tried whole reads every one its events name in one statement, locked in primary-key order, and
`locked` hands them out. A handler that changes one changes the object the next handler of the batch gets,
which so sees the change as a second SELECT would. A row missing at the start is looked for again (a handler
of the batch may have created it since). Elsewhere (a handler's own task, a batch run with a savepoint per
event, whose rolled-back savepoints would leave changed objects behind, the API) `locked` queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db.models import Model

from eventbus.subscriptions import Preload

M = TypeVar("M", bound=Model)
Key = tuple[type[Model], str, Any]

_rows: ContextVar[dict[Key, Model] | None] = ContextVar("preloaded_rows", default=None)


@contextmanager
def preloaded(preloads: Iterable[Preload], raw_events: list[dict[str, Any]]) -> Iterator[None]:
    """Lock and read the rows `preloads` name for `raw_events`, inside the batch's transaction, for `locked` to
    hand out until the block ends. An event without the key, or with a value the field cannot hold (a poison
    event, filed by its handler), names none."""
    rows: dict[Key, Model] = {}
    for preload in preloads:
        model = preload.model
        field = _field_name(model, preload.field)
        keys = set(_values(model, field, preload.key, raw_events))
        if keys:
            for row in model._default_manager.select_for_update().filter(**{f"{field}__in": keys}).order_by("pk"):
                rows[(model, field, getattr(row, field))] = row
    token = _rows.set(rows)
    try:
        yield
    finally:
        _rows.reset(token)


def locked(model: type[M], **lookup: Any) -> M | None:
    """The row of `model` whose one field in `lookup` has its value (`pk=...`, `order_id=...`), locked until the
    transaction ends; None if there is none."""
    ((name, value),) = lookup.items()
    rows = _rows.get()
    if rows is not None:
        field = _field_name(model, name)
        try:
            row = rows.get((model, field, model._meta.get_field(field).to_python(value)))
        except ValidationError:
            row = None
        if row is not None:
            return row  # type: ignore[return-value]
    return model._default_manager.select_for_update().filter(**lookup).first()


def _field_name(model: type[Model], name: str) -> str:
    return model._meta.pk.name if name == "pk" else name


def _values(model: type[Model], field: str, key: str, raw_events: list[dict[str, Any]]) -> Iterator[Any]:
    to_python = model._meta.get_field(field).to_python
    for raw in raw_events:
        data = raw.get("data") if isinstance(raw, dict) else None
        if isinstance(data, dict) and data.get(key) is not None:
            try:
                yield to_python(data[key])
            except ValidationError:
                continue
