"""The dead-letter store: fingerprints and failure groups, corrections checked before they go, replay records."""

from __future__ import annotations

import importlib
import json
import re
from datetime import timedelta

import pytest
from celery import current_app
from django.apps import apps
from django.core.management import CommandError, call_command

from eventbus import deadletters
from eventbus.envelope import CONTENT_TYPE
from eventbus.models import DeadLetter, DeadLetterReplay
from eventbus.tests.letters import an_event, handler_letter, poison_letter
from tests import factories

pytestmark = pytest.mark.django_db

# --- fingerprints and groups


def test_letters_that_failed_alike_share_a_fingerprint_whatever_their_messages():
    first = handler_letter(ValueError("stock row P001 is locked"))
    second = handler_letter(ValueError("stock row P002 is locked"))
    other_class = handler_letter(KeyError("P001"))
    other_handler = handler_letter(ValueError("locked"), handler="payments.authorize_payment")
    same_queue_other_handler = handler_letter(ValueError("locked"), handler="inventory.commit_stock")
    other_type = handler_letter(ValueError("locked"), event={**an_event(), "type": "orders.OrderPlaced.v2"})

    assert first.error_class == "ValueError" and other_class.error_class == "KeyError"
    assert first.fingerprint == second.fingerprint
    others = [other_class, other_handler, same_queue_other_handler, other_type]
    assert len({first.fingerprint, *(letter.fingerprint for letter in others)}) == 5


def test_a_letter_that_failed_before_any_handler_is_grouped_by_its_queue_and_reason():
    wrong_schema = poison_letter(an_event(items=[]))
    also_wrong = poison_letter(an_event(currency="dollars"))
    not_json = deadletters.store(reason=DeadLetter.Reason.POISON, queue="inventory.events", body=b'{"id": ',
                                 content_type=CONTENT_TYPE, error="body is not valid JSON")  # fmt: skip
    broker = deadletters.store(reason=DeadLetter.Reason.BROKER, queue="inventory.events", body=b"{}",
                               error="dead-lettered by RabbitMQ: delivery_limit")  # fmt: skip

    assert wrong_schema.error_class == "poison" and broker.error_class == "broker"
    assert wrong_schema.fingerprint == also_wrong.fingerprint
    assert wrong_schema.fingerprint == deadletters.fingerprint_of(
        event_type="orders.OrderPlaced.v1", consumer="inventory.events", error_class="poison"
    )
    assert not_json.fingerprint != wrong_schema.fingerprint  # no type to read: a group of its own


def test_a_message_delivered_again_is_filed_once_the_same_bytes_sent_again_twice():
    def file(body: bytes, *, queue: str = "inventory.events", redelivered: bool = False) -> DeadLetter:
        return deadletters.store(reason=DeadLetter.Reason.POISON, queue=queue, body=body, error="not JSON",
                                 redelivered=redelivered)  # fmt: skip

    # A message filed, whose acknowledgement was lost: the broker delivers it again, marked redelivered
    first = file(b"garbage 1")
    again = file(b"garbage 1", redelivered=True)
    assert again.pk == first.pk and DeadLetter.objects.count() == 1

    # The same bytes published again arrive as a new delivery: a letter of their own
    assert file(b"garbage 1").pk != first.pk
    # Redelivered, but never filed (the consumer died before filing it), or filed from another queue: filed
    file(b"garbage 2", redelivered=True)
    file(b"garbage 1", queue="payments.events", redelivered=True)
    assert DeadLetter.objects.count() == 4


def test_groups_count_letters_and_unhandled_ones_and_show_the_newest_as_sample():
    older = handler_letter(ValueError("one"))
    newer = handler_letter(ValueError("two"))
    DeadLetter.objects.filter(pk=older.pk).update(created_at=older.created_at - timedelta(hours=2))
    DeadLetter.objects.filter(pk=newer.pk).update(replayed_at=newer.created_at)
    lone = handler_letter(KeyError("three"))

    groups = deadletters.groups()

    assert [group.fingerprint for group in groups] == [lone.fingerprint, older.fingerprint]  # last seen first
    group = groups[1]
    assert (group.total, group.unhandled, group.sample.pk) == (2, 1, newer.pk)
    assert group.first_seen == older.created_at - timedelta(hours=2) and group.last_seen == newer.created_at
    assert group.replayable


def test_the_migration_gives_letters_filed_before_it_their_fingerprints():
    letters = [handler_letter(ValueError("x")), poison_letter(an_event(items=[]))]
    expected = [(letter.error_class, letter.fingerprint) for letter in letters]
    DeadLetter.objects.update(error_class="", fingerprint="")
    migration = importlib.import_module("eventbus.migrations.0006_deadletter_console")

    migration.fill_fingerprints(apps, None)

    assert [(row.error_class, row.fingerprint) for row in DeadLetter.objects.order_by("pk")] == expected


# --- corrections are checked before anything goes


@pytest.mark.parametrize(
    ("correct", "problem"),
    [
        (lambda raw: '{"specversion": "1.0", ', "not valid JSON"),
        (lambda raw: json.dumps({**raw, "id": ""}), "missing CloudEvents attribute(s): id"),
        (lambda raw: json.dumps({**raw, "data": {**raw["data"], "items": []}}), "data does not match"),
        (lambda raw: json.dumps({**raw, "type": "orders.OrderTeleported.v1"}), "unknown event type"),
        (lambda raw: json.dumps({**raw, "type": "orders.OrderCancelled.v1"}), "does not match"),
        (lambda raw: json.dumps({**raw, "hops": 99}), "over the limit"),
        (lambda raw: json.dumps({**raw, "time": "2001-01-01T00:00:00Z"}), "older than the inbox window"),
    ],
    ids=["not-json", "envelope", "contract", "unknown-type", "other-type-bad-data", "hops", "expired"],
)
def test_a_correction_that_fails_its_checks_is_refused_and_nothing_is_sent_or_recorded(
    inventory_events, correct, problem
):
    letter = poison_letter(an_event(items=[]))
    fixed = json.loads(letter.body)
    fixed["data"]["items"] = [{"productId": "P001", "quantity": 1}]

    with current_app.connection_for_write() as connection, pytest.raises(deadletters.InvalidBody) as refused:
        deadletters.replay(letter, connection, actor="admin", body=correct(fixed))

    assert problem in str(refused.value)
    assert inventory_events() == []
    assert not DeadLetterReplay.objects.exists()
    letter.refresh_from_db()
    assert letter.replayed_at is None and letter.replay_count == 0


def test_a_correction_must_still_reach_the_handler_that_failed(inventory_events):
    cancelled = factories.order_placed_event() | {"type": "orders.OrderCancelled.v1"}
    cancelled["data"] = {"orderId": cancelled["data"]["orderId"], "reason": "customer asked"}
    letter = handler_letter(ValueError("x"))  # inventory.reserve_stock, which reads OrderPlaced

    with pytest.raises(
        deadletters.InvalidBody, match=re.escape("inventory.reserve_stock does not handle orders.OrderCancelled")
    ):
        deadletters.corrected_body(letter, json.dumps(cancelled))
    assert inventory_events() == []


# --- replays are recorded


def test_a_corrected_replay_sends_the_correction_and_records_who_what_and_the_outcome(
    inventory_events, django_capture_on_commit_callbacks
):
    letter = poison_letter(an_event(items=[]))
    before = letter.body
    fixed = json.loads(before)
    fixed["data"]["items"] = [{"productId": "P001", "quantity": 1}]

    with django_capture_on_commit_callbacks(execute=True), current_app.connection_for_write() as connection:
        record = deadletters.replay(letter, connection, actor="alice", body=json.dumps(fixed, indent=4))

    [message] = inventory_events()
    assert json.loads(message.body) == fixed
    assert message.headers[deadletters.REPLAY_HEADER] == letter.pk
    record.refresh_from_db()
    assert (record.actor, record.queue, record.outcome) == ("alice", "inventory.events", "sent")
    assert record.edited and record.body_before == before and record.body_after == message.body.decode()
    assert '-  "items": [],' in deadletters.replay_diff(record).replace("    ", "  ")
    letter.refresh_from_db()
    assert letter.body == record.body_after and letter.replay_count == 1 and letter.replayed_at is not None
    assert deadletters.replay_vouched(letter.pk, message.body)  # the intake takes it as authentic


def test_a_body_submitted_unchanged_is_no_correction_the_stored_text_goes(
    inventory_events, django_capture_on_commit_callbacks
):
    letter = handler_letter(ValueError("x"))
    reformatted = deadletters.readable_body(letter.body)
    assert reformatted != letter.body

    with django_capture_on_commit_callbacks(execute=True), current_app.connection_for_write() as connection:
        record = deadletters.replay(letter, connection, actor="alice", body=reformatted)

    [message] = inventory_events()
    assert message.body.decode() == letter.body
    assert not record.edited and deadletters.replay_diff(record) == ""


def test_a_replay_the_broker_refuses_is_recorded_as_not_sent(django_capture_on_commit_callbacks):
    class RefusingConnection:
        def Producer(self):
            return self

        def publish(self, *args, **kwargs):
            raise ConnectionRefusedError("broker away")

    letter = handler_letter(ValueError("x"))

    with pytest.raises(ConnectionRefusedError), django_capture_on_commit_callbacks(execute=True):
        deadletters.replay(letter, RefusingConnection(), actor="alice")

    record = DeadLetterReplay.objects.get()
    assert record.outcome == "failed" and "broker away" in record.error


def test_a_forged_letter_is_never_replayed_nor_recorded(inventory_events):
    forged = deadletters.store(reason=DeadLetter.Reason.FORGED, queue="inventory.events", body=an_event(),
                               error="orders.OrderPlaced.v1 is published by 'orders' only")  # fmt: skip

    with current_app.connection_for_write() as connection, pytest.raises(deadletters.NotReplayable):
        deadletters.replay(forged, connection, actor="alice")

    assert not DeadLetterReplay.objects.exists()


def test_replaying_a_group_replays_its_unhandled_letters_only(inventory_events, django_capture_on_commit_callbacks):
    waiting = [handler_letter(ValueError("a")), handler_letter(ValueError("b"))]
    done = handler_letter(ValueError("c"))
    DeadLetter.objects.filter(pk=done.pk).update(replayed_at=done.created_at)
    elsewhere = handler_letter(KeyError("d"))

    with django_capture_on_commit_callbacks(execute=True), current_app.connection_for_write() as connection:
        records = deadletters.replay_group(waiting[0].fingerprint, connection, actor="alice")

    assert sorted(record.dead_letter_id for record in records) == [letter.pk for letter in waiting]
    assert len(inventory_events()) == 2
    assert set(DeadLetterReplay.objects.values_list("outcome", flat=True)) == {"sent"}
    assert not DeadLetterReplay.objects.filter(dead_letter__in=[done, elsewhere]).exists()


# --- manage.py dlq


def test_dlq_replay_records_the_os_user_and_checks_a_body_file(
    inventory_events, tmp_path, monkeypatch, capsys, django_capture_on_commit_callbacks
):
    monkeypatch.setenv("LOGNAME", "operator")
    letter = poison_letter(an_event(items=[]))
    still_wrong, fixed = tmp_path / "still-wrong.json", tmp_path / "fixed.json"
    still_wrong.write_text(letter.body)
    raw = json.loads(letter.body)
    raw["data"]["items"] = [{"productId": "P001", "quantity": 1}]
    fixed.write_text(json.dumps(raw))

    with pytest.raises(CommandError, match=re.escape("is not sent: data does not match orders.OrderPlaced.v1")):
        call_command("dlq", "replay", str(letter.pk), "--body-file", str(still_wrong))
    assert not DeadLetterReplay.objects.exists() and inventory_events() == []

    with django_capture_on_commit_callbacks(execute=True):
        call_command("dlq", "replay", str(letter.pk), "--body-file", str(fixed))

    record = DeadLetterReplay.objects.get()
    assert record.actor == "cli:operator" and record.edited and record.outcome == "sent"
    assert len(inventory_events()) == 1
    call_command("dlq", "show", str(letter.pk))
    assert "by cli:operator, corrected, sent" in capsys.readouterr().out


def test_a_handlers_letter_delivered_again_is_filed_once_and_apart_from_another_handlers():
    event = factories.order_placed_event()

    def file(handler: str, *, redelivered: bool) -> DeadLetter:
        return deadletters.store(reason=DeadLetter.Reason.PERMANENT, queue="inventory.tasks", handler=handler,
                                 body=event, error="PermanentError: no", redelivered=redelivered)  # fmt: skip

    first = file("inventory.reserve_stock", redelivered=False)
    # Two handlers of one service may fail the same event from the same queue: each files its own letter
    other = file("inventory.audit", redelivered=True)
    again = file("inventory.reserve_stock", redelivered=True)
    assert again.pk == first.pk and other.pk != first.pk
    assert DeadLetter.objects.count() == 2
