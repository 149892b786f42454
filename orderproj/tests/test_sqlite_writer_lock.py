"""The SQLite backend's writer lock: a transaction waits for the one before it and starts as it ends."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="the writer lock belongs to the SQLite backend"),
]


def run_in_thread(target) -> threading.Thread:
    def with_own_connection() -> None:
        try:
            target()
        finally:
            connections.close_all()

    thread = threading.Thread(target=with_own_connection)
    thread.start()
    return thread


def test_a_second_writer_begins_the_moment_the_first_commits():
    holding, began = threading.Event(), []

    def first() -> None:
        with transaction.atomic():
            holding.set()
            time.sleep(0.35)  # SQLite's busy handler would wake at 0.328 s and 0.428 s
            began.append(("first committing", time.monotonic()))

    def second() -> None:
        holding.wait()
        with transaction.atomic():
            began.append(("second began", time.monotonic()))

    threads = [run_in_thread(first), run_in_thread(second)]
    for thread in threads:
        thread.join(10)
    assert [name for name, _ in began] == ["first committing", "second began"]
    # SQLite's own busy handler would have slept in steps of up to 100 ms.
    assert began[1][1] - began[0][1] < 0.03


def test_a_rolled_back_transaction_lets_the_next_one_in():
    def failing() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            raise RuntimeError("boom")

    run_in_thread(failing).join(10)
    finished = threading.Event()

    def next_writer() -> None:
        with transaction.atomic():
            finished.set()

    run_in_thread(next_writer).join(10)
    assert finished.is_set()
