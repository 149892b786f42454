"""The health page and /metrics stay cheap on big tables: PostgreSQL's EXPLAIN of every query
`pipeline_health()` issues shows index scans only, never a sequential scan."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from eventbus import health
from eventbus.models import DeadLetter, InboxMessage, OutboxMessage
from eventbus.tests.bulk import days_before, fill, uuid_of
from orders.models import Order

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="EXPLAIN plans are PostgreSQL's; SQLite has no planner estimates to read",
    ),
    pytest.mark.django_db(transaction=True),  # VACUUM cannot run inside the test's transaction
]

ROWS = 300_000


def fill_big_tables() -> None:
    """300 000 rows each of outbox, inbox and orders, 100 000 dead letters: mostly done work, a little waiting."""
    now = timezone.now()
    age = days_before(now, f"({ROWS} - n) / 50000.0")  # up to 6 days old, the newest last
    fill(OutboxMessage, ROWS, event_id=uuid_of("n"), event_type="'t'", exchange="'x'", routing_key="'x'", body={},
         created_at=age, sent_at=f"CASE WHEN n % 300 = 0 THEN NULL ELSE {age} END")  # fmt: skip
    fill(InboxMessage, ROWS, handler="'h'", event_id=uuid_of("n"), event_type="'t'", processed_at=age)
    fill(DeadLetter, ROWS // 3, reason="'exhausted'", queue="'q'", body="'{}'", error="'boom'", created_at=age,
         replayed_at=f"CASE WHEN n % 100 = 0 THEN NULL ELSE {age} END")  # fmt: skip
    status = "CASE WHEN n % 100 = 0 THEN 'pending' WHEN n % 5 = 0 THEN 'cancelled' ELSE 'confirmed' END"
    fill(Order, ROWS, id=uuid_of("n"), customer_email="'a@example.com'", status=status, total_amount="10",
         created_at=age, updated_at=age)  # fmt: skip
    with connection.cursor() as cursor:
        for model in (OutboxMessage, InboxMessage, DeadLetter, Order):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")  # what autovacuum does after such growth


def test_every_health_query_reads_an_index_not_the_whole_table(monkeypatch, capsys):
    # Given big tables and a broker that answers at once
    fill_big_tables()
    monkeypatch.setattr(health, "_management_queues", lambda: [])

    # When the health figures are collected
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        figures = health.pipeline_health()
        elapsed = time.perf_counter() - started

    # Then no query the page issued scans a table from end to end
    plans = {}
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            if query["sql"].startswith("EXPLAIN"):  # a planner estimate: planned, never run
                continue
            cursor.execute(f"EXPLAIN {query['sql']}")
            plans[query["sql"]] = " / ".join(row[0].strip() for row in cursor.fetchall())
    with capsys.disabled():
        print(f"\npipeline_health() on {ROWS} rows a table: {len(captured)} queries, {elapsed * 1000:.0f} ms")
        for sql, plan in plans.items():
            print(f"  {sql[:110]}\n    -> {plan[:300]}")
    assert plans and not [sql for sql, plan in plans.items() if "Seq Scan" in plan]

    # and the figures are right: exact where work waits, estimated for the many finished orders
    assert figures.outbox.pending == ROWS // 300
    assert figures.outbox.last_sent_at == OutboxMessage.objects.exclude(sent_at=None).latest("sent_at").sent_at
    assert figures.dead_letters.unreplayed == ROWS // 3 // 100
    assert figures.dead_letters.total == pytest.approx(ROWS // 3, rel=0.05)
    assert figures.figures["orders"]["pending"] == ROWS // 100
    assert figures.figures["orders"]["confirmed"] == pytest.approx(ROWS * 0.8, rel=0.05)
    assert figures.figures["orders"]["cancelled"] == pytest.approx(ROWS * 0.19, rel=0.1)
    assert figures.last_event_handled_at > timezone.now() - timedelta(minutes=5)
