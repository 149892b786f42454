"""Retention: what goes and what stays on tables of hundreds of thousands of rows, and why the inbox
window keeps effects exactly-once. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_celery_results.models import TaskResult

from eventbus import tasks
from eventbus.envelope import from_dict
from eventbus.errors import EventExpired
from eventbus.handling import run_handler
from eventbus.models import DeadLetter, InboxMessage, OutboxMessage
from eventbus.retention import check_retention_policy, event_expired, redelivery_bound, retention_run
from eventbus.subscriptions import handler_by_name
from eventbus.tests.bulk import days_before, fill, uuid_of
from eventbus.tests.stand_ins import FakeTask
from inventory.models import Product
from orderproj.settings.base import env_duration
from tests import factories

pytestmark = pytest.mark.django_db

OUTBOX, INBOX, TASK_RESULTS, DEAD_LETTERS = 100_000, 100_000, 60_000, 40_000


@pytest.fixture(autouse=True)
def windows(settings):
    settings.EVENTBUS_RETENTION_OUTBOX_SENT = timedelta(days=7)
    settings.EVENTBUS_RETENTION_INBOX = timedelta(days=14)
    settings.EVENTBUS_RETENTION_TASK_RESULTS = timedelta(days=7)
    settings.EVENTBUS_RETENTION_DEAD_LETTERS = timedelta(days=30)


@dataclass(frozen=True)
class Markers:
    unsent: int
    blocked: int
    recently_sent: int


def fill_tables(now: datetime) -> Markers:
    """Row n of each table is (n % 20) + 0.5 days old (dead letters: (n % 40) + 0.5), so no row sits
    on a window's edge; n is kept in a column to tell the rows apart afterwards."""
    age = days_before(now, "(n % 20) + 0.5")
    fill(
        OutboxMessage,
        OUTBOX,
        event_id=uuid_of("n"),
        event_type="'test.Filler.v1'",
        exchange="'test'",
        routing_key="'test'",
        body={"type": "test.Filler.v1"},
        created_at=age,
        sent_at=f"CASE WHEN n % 10 = 0 THEN NULL ELSE {age} END",  # every tenth row is not sent yet
        publish_attempts="n",
    )
    fill(InboxMessage, INBOX, handler="'test.handler'", event_id=uuid_of("n"), event_type="'t'",
         task_id="CAST(n AS TEXT)", processed_at=age)  # fmt: skip
    fill(TaskResult, TASK_RESULTS, task_id="CAST(n AS TEXT)", status="'SUCCESS'", date_created=age, date_done=age)
    dead_age = days_before(now, "(n % 40) + 0.5")
    fill(
        DeadLetter,
        DEAD_LETTERS,
        reason="'exhausted'",
        queue="'test.tasks'",
        body="'{}'",
        error="'boom'",
        attempts="n",
        created_at=days_before(now, "(n % 40) + 1.5"),
        replayed_at=f"CASE WHEN n % 3 = 0 THEN NULL ELSE {dead_age} END",  # every third one waits for an operator
    )
    month_ago = now - timedelta(days=30)
    (unsent,) = factories.outbox_rows("unsent", created_at=month_ago)
    (blocked,) = factories.outbox_rows("blocked", created_at=month_ago, blocked_at=month_ago + timedelta(hours=1))
    (recent,) = factories.outbox_rows("recent", created_at=now - timedelta(days=6), sent_at=now - timedelta(days=6))
    return Markers(unsent.pk, blocked.pk, recent.pk)


# Which row n of each filled table is past its window.
def outbox_expired(n: int) -> bool:
    return n % 10 != 0 and n % 20 >= 7  # sent more than 7 days ago


def inbox_expired(n: int) -> bool:
    return n % 20 >= 14


def task_result_expired(n: int) -> bool:
    return n % 20 >= 7


def dead_letter_expired(n: int) -> bool:
    return n % 3 != 0 and n % 40 >= 30  # replayed more than 30 days ago


def inbox_rows(count: int, *, days_old: str, now: datetime) -> None:
    fill(
        InboxMessage,
        count,
        handler="'h'",
        event_id=uuid_of("n"),
        event_type="'t'",
        processed_at=days_before(now, days_old),
    )


def kept(count: int, expired: Callable[[int], bool]) -> set[int]:
    return {n for n in range(1, count + 1) if not expired(n)}


def test_retention_deletes_exactly_the_rows_past_their_windows_and_keeps_the_rest(capsys):
    # Given 300 000 rows of every age, some of them work still to do
    markers = fill_tables(timezone.now())
    expected = {
        "outbox (sent)": OUTBOX - len(kept(OUTBOX, outbox_expired)),
        "inbox": INBOX - len(kept(INBOX, inbox_expired)),
        "task results": TASK_RESULTS - len(kept(TASK_RESULTS, task_result_expired)),
        "dead letters (replayed)": DEAD_LETTERS - len(kept(DEAD_LETTERS, dead_letter_expired)),
    }

    # When a dry run looks first
    dry = retention_run(dry_run=True)

    # Then it counts what would go and deletes nothing
    assert {p.table: p.rows for p in dry} == expected
    assert OutboxMessage.objects.count() == OUTBOX + 3 and TaskResult.objects.count() == TASK_RESULTS

    # When retention runs
    started = time.perf_counter()
    purges = retention_run()
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nretention of {sum(expected.values())} of {OUTBOX + INBOX + TASK_RESULTS + DEAD_LETTERS} rows: "
              f"{elapsed:.1f} s")  # fmt: skip

    # Then exactly the expired rows are gone, table by table
    assert {p.table: p.rows for p in purges} == expected and all(p.complete for p in purges)
    outbox = set(OutboxMessage.objects.filter(event_type="test.Filler.v1").values_list("publish_attempts", flat=True))
    assert outbox == kept(OUTBOX, outbox_expired)
    assert set(OutboxMessage.objects.exclude(event_type="test.Filler.v1").values_list("pk", flat=True)) == {
        markers.unsent,
        markers.blocked,
        markers.recently_sent,
    }
    inbox = {int(n) for n in InboxMessage.objects.values_list("task_id", flat=True)}
    assert inbox == kept(INBOX, inbox_expired)
    results = {int(n) for n in TaskResult.objects.values_list("task_id", flat=True)}
    assert results == kept(TASK_RESULTS, task_result_expired)
    assert set(DeadLetter.objects.values_list("attempts", flat=True)) == kept(DEAD_LETTERS, dead_letter_expired)
    # and what is work still to do is never deleted, however old
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == OUTBOX // 10 + 2
    assert DeadLetter.objects.filter(replayed_at__isnull=True).count() == DEAD_LETTERS // 3

    # When it runs again, nothing is left to delete
    assert sum(p.rows for p in retention_run()) == 0


def test_the_command_prints_progress_per_table_and_a_dry_run_deletes_nothing(capsys):
    now = timezone.now()
    inbox_rows(12, days_old="n + 9.5", now=now)  # 10.5 to 21.5 days old

    call_command("retention", "--dry-run", "--batch-size", "5")
    out = capsys.readouterr().out
    assert "inbox: would delete 5 rows so far" in out and "inbox: would delete 8 rows older than" in out
    assert "retention: would delete 8 rows in all" in out and InboxMessage.objects.count() == 12

    call_command("retention", "--batch-size", "5")
    out = capsys.readouterr().out
    assert "inbox: deleted 8 rows older than" in out and "outbox (sent): deleted 0 rows" in out
    assert sorted(InboxMessage.objects.values_list("processed_at__date", flat=True)) == sorted(
        (now - timedelta(days=n + 9.5)).date() for n in (1, 2, 3, 4)
    )


def test_a_run_out_of_time_budget_stops_between_batches_and_says_so():
    inbox_rows(3, days_old="30", now=timezone.now())

    purges = retention_run(budget=0.0, batch_size=1)

    assert not any(p.complete for p in purges) and InboxMessage.objects.count() == 3


def test_bad_windows_and_batch_sizes_are_refused_before_anything_is_deleted(settings, monkeypatch):
    inbox_rows(3, days_old="30", now=timezone.now())

    settings.EVENTBUS_RETENTION_OUTBOX_SENT = timedelta(days=-1)
    with pytest.raises(ImproperlyConfigured, match="EVENTBUS_RETENTION_OUTBOX_SENT must be a positive duration"):
        retention_run()
    settings.EVENTBUS_RETENTION_OUTBOX_SENT = timedelta(days=7)
    with pytest.raises(CommandError, match="batch size must be positive"):
        call_command("retention", "--batch-size", "0")

    # An inbox window shorter than the longest redelivery fails the system check and every run
    settings.EVENTBUS_RETENTION_INBOX = redelivery_bound() - timedelta(seconds=1)
    [error] = check_retention_policy()
    assert error.id == "eventbus.E001" and "EVENTBUS_RETENTION_INBOX" in error.msg
    with pytest.raises(CommandError, match="must be at least"):
        call_command("retention")
    assert InboxMessage.objects.count() == 3
    settings.EVENTBUS_RETENTION_INBOX = redelivery_bound()
    assert check_retention_policy() == []

    # The environment is read strictly: a negative or unit-less nonsense window stops start-up
    for given in ("-7d", "0", "7 weeks", "soon"):
        monkeypatch.setenv("EVENTBUS_RETENTION_INBOX", given)
        with pytest.raises(ImproperlyConfigured, match="expected a positive duration"):
            env_duration("EVENTBUS_RETENTION_INBOX", "14d")
    monkeypatch.setenv("EVENTBUS_RETENTION_INBOX", "36h")
    assert env_duration("EVENTBUS_RETENTION_INBOX", "14d") == timedelta(hours=36)


def test_the_default_inbox_window_outlives_the_longest_retry_schedule():
    # 5 attempts x (60 s delay + 60 s time limit) + 120 s order timeout + 1 h margin
    assert redelivery_bound() == timedelta(seconds=5 * 120 + 120, hours=1)
    assert check_retention_policy() == []


def aged_event(days: float) -> dict:
    """The OrderPlaced of a fresh order, as if it had been published `days` ago."""
    factories.order(("P001", 2))
    raw = OutboxMessage.objects.filter(event_type="orders.OrderPlaced.v1").latest("pk").body
    at = datetime.now(UTC) - timedelta(days=days)
    return {**raw, "time": at.isoformat().replace("+00:00", "Z")}


def test_a_redelivery_inside_the_inbox_window_after_retention_still_has_one_effect():
    # Given an event handled 13 days ago (inbox window 14 days), among inbox rows from long before
    factories.product("P001", stock=10)
    handler = handler_by_name("inventory.reserve_stock")
    raw = aged_event(days=13)
    assert run_handler(FakeTask(0), handler, raw)["outcome"] == "done"
    InboxMessage.objects.update(processed_at=timezone.now() - timedelta(days=13))
    inbox_rows(1_000, days_old="15", now=timezone.now())

    # When retention runs and then the event is delivered again
    [inbox] = [p for p in retention_run() if p.table == "inbox"]
    again = run_handler(FakeTask(0), handler, raw)

    # Then retention kept its inbox row, which absorbs the redelivery: stock is held once
    assert inbox.rows == 1_000
    assert again["outcome"] == "duplicate"
    assert Product.objects.get(sku="P001").stock_reserved == 2
    assert not DeadLetter.objects.exists()


def test_an_event_older_than_the_inbox_window_is_dead_lettered_as_expired_not_applied():
    # Given an event handled 15 days ago whose inbox row retention has deleted
    factories.product("P001", stock=10)
    handler = handler_by_name("inventory.reserve_stock")
    raw = aged_event(days=15)
    assert event_expired(raw["time"]) and not event_expired(aged_event(days=13)["time"])
    assert not event_expired("") and not event_expired("not a time")

    # When it comes back (a replayed dead letter, a queue drained after a long outage)
    with pytest.raises(EventExpired):
        run_handler(FakeTask(0), handler, raw)

    # Then it has no effect and waits, visible and replayable, in the dead-letter store
    assert Product.objects.get(sku="P001").stock_reserved == 0
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.handler, letter.event_id) == ("expired", handler.name, raw["id"])
    assert "older than the inbox window" in letter.error
    assert from_dict(json.loads(letter.body)).id == raw["id"]


def test_an_old_event_whose_inbox_row_is_still_there_is_a_plain_duplicate():
    factories.product("P001", stock=10)
    handler = handler_by_name("inventory.reserve_stock")
    raw = aged_event(days=15)
    assert run_handler(FakeTask(0), handler, {**raw, "time": timezone.now().isoformat()})["outcome"] == "done"

    assert run_handler(FakeTask(0), handler, raw)["outcome"] == "duplicate"
    assert Product.objects.get(sku="P001").stock_reserved == 2 and not DeadLetter.objects.exists()


def test_the_beat_task_queues_a_follow_up_run_when_its_time_budget_runs_out(settings, monkeypatch):
    inbox_rows(3, days_old="30", now=timezone.now())
    follow_ups = []
    monkeypatch.setattr(tasks.retention, "delay", lambda: follow_ups.append(1))

    settings.CELERY_TASK_SOFT_TIME_LIMIT = 0  # no time at all: stops before the first batch
    assert tasks.retention()["inbox"] == 0 and follow_ups == [1]

    settings.CELERY_TASK_SOFT_TIME_LIMIT = 30
    assert tasks.retention()["inbox"] == 3 and follow_ups == [1]
