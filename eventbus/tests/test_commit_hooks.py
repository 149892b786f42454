"""on_commit_once: one call per commit, with every item the transaction gathered."""

import pytest
from django.db import transaction

from eventbus.commit_hooks import on_commit_once

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_transaction_calls_back_once_with_the_union_of_its_items():
    calls = []
    with transaction.atomic():
        on_commit_once(calls.append, ["P001"])
        on_commit_once(calls.append, ["P002", "P001"])
        assert calls == [], "not before the commit"
    assert calls == [{"P001", "P002"}]

    with transaction.atomic():
        on_commit_once(calls.append, ["P003"])
    assert calls == [{"P001", "P002"}, {"P003"}], "the next transaction starts afresh"


def test_items_of_a_rolled_back_savepoint_or_transaction_come_with_the_next_commit():
    calls = []
    with transaction.atomic():
        try:
            with transaction.atomic():  # the only call of this transaction rolls back with its savepoint
                on_commit_once(calls.append, ["P001"])
                raise RuntimeError
        except RuntimeError:
            pass
        on_commit_once(calls.append, ["P002"])
    assert calls == [{"P001", "P002"}], "an extra item, never a missing call"
