"""A service joins its handler's savepoint instead of opening one of its own, and still fails alone."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from eventbus.models import InboxMessage
from eventbus.transactions import handler_transaction, service_transaction

pytestmark = pytest.mark.django_db(transaction=True)


@service_transaction
def record(handler: str, *, fail: bool = False) -> None:
    InboxMessage.objects.create(handler=handler, event_id=uuid.uuid4(), event_type="test.Happened.v1")
    if fail:
        raise RuntimeError("the service fails after writing")


def savepoints(queries: CaptureQueriesContext) -> int:
    return sum(query["sql"].startswith("SAVEPOINT") for query in queries.captured_queries)


def test_a_service_inside_a_handler_opens_no_savepoint_of_its_own():
    with CaptureQueriesContext(connection) as queries, transaction.atomic():  # a batch
        with handler_transaction():
            record("first")
        with handler_transaction():
            record("second")
    assert savepoints(queries) == 2  # one per handler, none per service
    assert InboxMessage.objects.count() == 2


def test_a_failing_service_takes_back_its_handlers_work_only():
    with transaction.atomic():  # a batch
        with handler_transaction():
            record("neighbour")
        with pytest.raises(RuntimeError), handler_transaction():
            record("failing", fail=True)
        with handler_transaction():
            record("next")
    assert sorted(InboxMessage.objects.values_list("handler", flat=True)) == ["neighbour", "next"]


def test_a_service_called_in_some_other_transaction_keeps_its_savepoint():
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        with pytest.raises(RuntimeError):
            record("failing", fail=True)
        record("after")  # the caller's transaction goes on: only the service's savepoint was rolled back
    assert savepoints(queries) == 2
    assert list(InboxMessage.objects.values_list("handler", flat=True)) == ["after"]
