"""Work to do once a transaction commits, done once however many times the transaction asked for it.

A batch of events commits many handlers' work at once: the relay needs one nudge for it, not one per
event, and a cache one refresh with every key the batch touched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.db import transaction

_gathered = threading.local()


def on_commit_once(callback: Callable[[set[Any]], None], items: Iterable[Any] = ()) -> None:
    """Call `callback` after the current transaction commits (at once outside one), once, with the union of
    the `items` of every call that named it. Items of a rolled-back transaction are passed on at the next
    commit that calls it, so the callback must not mind extra items (a cache refresh, a wake-up)."""
    pending: dict[Callable, set[Any]] = _gathered.__dict__.setdefault("pending", {})
    pending.setdefault(callback, set()).update(items)
    transaction.on_commit(lambda: _run(callback))


def _run(callback: Callable[[set[Any]], None]) -> None:
    items = _gathered.__dict__.get("pending", {}).pop(callback, None)
    if items is not None:  # the first of this commit's calls does the work for all of them
        callback(items)
