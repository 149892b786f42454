"""One savepoint per handler, not one more per service it calls.

In a batch, each (handler, event) runs in a savepoint of its own (eventbus.handling.apply_once), so that
a failing one takes back only its own work. The services a handler calls are transactions of their own
when called alone (from the API, the admin, a beat task), so each would add a second savepoint, two more
statements, inside the handler's. `service_transaction` makes a service join the handler's savepoint
instead: whatever it raises still rolls back to there, since the handler passes it on. A handler must
not catch a service's database error and carry on: the transaction is then marked for rollback, and
Django refuses further queries until the handler's block ends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

from django.db import transaction

P = ParamSpec("P")
R = TypeVar("R")

# How many atomic blocks were open once the current handler's began (None: no handler is running).
_handler_depth: ContextVar[int | None] = ContextVar("handler_transaction_depth", default=None)


@contextmanager
def handler_transaction(*, savepoint: bool = True) -> Iterator[None]:
    """The transaction (a savepoint, inside a batch's) a handler's inbox row and effects commit in; without
    `savepoint`, inside a caller's transaction, part of it."""
    with transaction.atomic(savepoint=savepoint):
        token = _handler_depth.set(len(transaction.get_connection().atomic_blocks))
        try:
            yield
        finally:
            _handler_depth.reset(token)


def service_transaction(function: Callable[P, R]) -> Callable[P, R]:
    """Run `function` in a transaction: its own, or its caller's (a savepoint of it), or, directly inside a
    handler's, that one."""

    @functools.wraps(function)
    def in_transaction(*args: P.args, **kwargs: P.kwargs) -> R:
        depth = _handler_depth.get()
        in_handler = depth is not None and len(transaction.get_connection().atomic_blocks) == depth
        with transaction.atomic(savepoint=not in_handler):
            return function(*args, **kwargs)

    return in_transaction
