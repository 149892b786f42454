"""After the database refused writes for a while, the workers carry on by themselves: no restart, no lost order."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from eventbus.models import OutboxMessage
from inventory.models import Reservation
from orders.models import Order
from payments.models import Payment
from tests import factories
from tests.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.disruptive, pytest.mark.django_db(transaction=True)]


def attempts_span() -> float:
    """The longest a handler's attempts can take before they run out: every backoff at its ceiling."""
    return sum(
        min(settings.EVENTBUS_RETRY_MAX_DELAY, settings.EVENTBUS_RETRY_BASE_DELAY * 2**attempt)
        for attempt in range(settings.EVENTBUS_MAX_ATTEMPTS - 1)
    )


@contextmanager
def writes_refused() -> Iterator[None]:
    """Every process's writes to the database fail until the block ends; reads still work."""
    if connection.vendor == "postgresql":
        with _postgres_read_only():
            yield
    else:
        with _sqlite_immutable(Path(connection.settings_dict["NAME"])):
            yield


@contextmanager
def _postgres_read_only() -> Iterator[None]:
    # The server's configuration, reloaded: open sessions (the workers' kept connections) take it too.
    with connection.cursor() as cursor:
        cursor.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        cursor.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER SYSTEM RESET default_transaction_read_only")
            cursor.execute("SELECT pg_reload_conf()")


@contextmanager
def _sqlite_immutable(path: Path) -> Iterator[None]:
    # chmod would not do: open files stay writable, and root ignores it. The immutable flag stops
    # writes through open files too. The -shm file is left alone: it is mapped into memory, and a
    # write to an immutable mapping kills the process with SIGBUS.
    files = [p for p in (path, path.with_name(f"{path.name}-wal")) if p.exists()]
    flagged: list[Path] = []
    try:
        for file in files:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(file)]).returncode != 0:
                pytest.skip("making SQLite refuse writes takes `chattr +i` (root, on a file system that has it)")
            flagged.append(file)
        yield
    finally:
        for file in flagged:
            subprocess.run(["chattr", "-i", str(file)], check=True)


def test_an_order_caught_in_a_database_write_outage_is_confirmed_once_writes_come_back(workers):
    factories.product("P301", stock=5)
    # Long enough for the payment handler to run out of attempts while writes are refused.
    outage = attempts_span() + 4

    # Given an order whose payment needs three attempts (tok_flaky), its event published, so that
    # the payment handler is still at work when the database starts refusing writes
    order = factories.order(("P301", 2), token="tok_flaky")
    wait_for(
        lambda: OutboxMessage.objects.filter(correlation_id=str(order.id), sent_at__isnull=False).exists(),
        what="the order's event published",
    )
    with writes_refused():
        time.sleep(outage)

    # When writes come back, then, with nothing restarted, the order is confirmed and paid once
    decided = wait_for(
        lambda: Order.objects.exclude(status=Order.Status.PENDING).filter(pk=order.pk).first(),
        timeout=settings.EVENTBUS_RETRY_MAX_DELAY + 30,
        what="the order to be decided after the outage",
    )
    assert decided.status == Order.Status.CONFIRMED, decided.cancel_reason
    payment = wait_for(
        lambda: Payment.objects.filter(order_id=order.pk, status=Payment.Status.CAPTURED).first(),
        what="the payment captured",
    )
    assert payment.amount == decided.total_amount

    # And the workers take new orders at once
    fresh = factories.order(("P301", 1), email="b@example.com")
    wait_for(
        lambda: Order.objects.filter(pk=fresh.pk, status=Order.Status.CONFIRMED).exists(),
        timeout=30,
        what="a new order confirmed after the outage",
    )
    # (and settled, so that the test's clean-up, which empties the tables, does not race the workers)
    wait_for(
        lambda: (
            Reservation.objects.filter(order_id=fresh.pk, status=Reservation.Status.COMMITTED).exists()
            and Payment.objects.filter(order_id=fresh.pk, status=Payment.Status.CAPTURED).exists()
            and not OutboxMessage.objects.filter(sent_at__isnull=True).exists()
        ),
        timeout=30,
        what="the new order settled",
    )
