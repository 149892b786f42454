"""Relays side by side: rows claimed under a lease, attempts and errors per row, blocked rows, one-off passes,
and each event published as its producer's broker user.

The claim tests call eventbus.outbox_claims directly; the publish tests use the real broker, on
an exchange and queues of their own in the run's vhost: `ok.*` keys reach a queue that takes
everything, `full` one that nacks every message (x-max-length 0, reject-publish). The producers'
users may write that exchange for the test's duration.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from types import SimpleNamespace

import pytest
import redis
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from kombu import Connection, Exchange, Queue

from eventbus.broker_admin import ManagementApi
from eventbus.identities import pipeline_grants, producers, service_user
from eventbus.models import OutboxMessage
from eventbus.outbox import nudge_channel
from eventbus.outbox_claims import (
    outbox_claim,
    outbox_mark_sent,
    outbox_record_failures,
    outbox_release,
    outbox_release_all,
    outbox_shares,
    outbox_unblock,
)
from eventbus.relay import Relay, publish_rows, sweep
from eventbus.tasks import sweep_outbox
from tests.factories import outbox_rows
from tests.harness import wait_for

pytestmark = pytest.mark.django_db


def ids(rows: list[OutboxMessage]) -> list[int]:
    return [row.id for row in rows]


def expire_leases() -> None:
    OutboxMessage.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))


def test_two_claimers_take_disjoint_leased_batches_in_id_order_and_each_try_counts(settings):
    # Given ten unsent rows
    rows = outbox_rows(*["ok"] * 10)

    # When two relays claim one after the other
    first = outbox_claim(claimer="relay-1", limit=6)
    second = outbox_claim(claimer="relay-2", limit=6)

    # Then each got its own rows, oldest first, leased to it, one attempt each; nothing is left
    assert ids(first) == ids(rows)[:6] and ids(second) == ids(rows)[6:]
    assert outbox_claim(claimer="relay-3", limit=6) == []
    lease_end = timezone.now() + timedelta(seconds=settings.EVENTBUS_RELAY_LEASE_SECONDS)
    for row in OutboxMessage.objects.all():
        assert row.claimed_by == ("relay-1" if row.id in ids(first) else "relay-2")
        assert lease_end - timedelta(seconds=5) < row.claimed_until <= lease_end
        assert row.publish_attempts == 1 and row.last_attempt_at is not None and row.sent_at is None


def test_an_expired_lease_is_taken_over_and_the_old_holder_can_no_longer_mark_its_rows():
    # Given rows claimed by a relay that then stalled past its lease
    rows = outbox_rows("ok", "ok")
    outbox_claim(claimer="relay-1", limit=10)
    expire_leases()

    # When another relay claims them and the broker confirms them to both
    assert ids(outbox_claim(claimer="relay-2", limit=10)) == ids(rows)
    late = outbox_mark_sent(claimer="relay-1", ids=ids(rows))
    marked = outbox_mark_sent(claimer="relay-2", ids=ids(rows))

    # Then only the current holder marked them, as sent by itself; both tries counted
    assert (late, marked) == (0, 2)
    assert {(row.sent_by, row.publish_attempts, row.claimed_until) for row in OutboxMessage.objects.all()} == {
        ("relay-2", 2, None)
    }
    assert outbox_shares() == {"relay-2": 2}


def test_a_refused_row_backs_off_is_blocked_after_its_attempts_and_unblocking_puts_it_back(settings):
    settings.EVENTBUS_RELAY_MAX_ATTEMPTS = 2
    # Given a row the broker refuses
    (row,) = outbox_rows("full")
    outbox_claim(claimer="relay-1", limit=1)
    outbox_record_failures(claimer="relay-1", failures={row.id: "nacked"})

    # Then it keeps its error, is free of its lease but waits out a backoff
    row.refresh_from_db()
    assert (row.last_error, row.claimed_until, row.blocked_at, row.sent_at) == ("nacked", None, None, None)
    assert row.next_attempt_at > timezone.now()
    assert outbox_claim(claimer="relay-1", limit=1) == []

    # When it is refused again after its backoff, on its last attempt
    OutboxMessage.objects.update(next_attempt_at=timezone.now())
    assert ids(outbox_claim(claimer="relay-2", limit=1)) == [row.id]
    outbox_record_failures(claimer="relay-2", failures={row.id: "returned unroutable"})

    # Then it is blocked, still unsent, and no claim takes it, however long one waits
    row.refresh_from_db()
    assert row.blocked_at is not None and row.sent_at is None and row.publish_attempts == 2
    assert row.last_error == "returned unroutable"
    OutboxMessage.objects.update(next_attempt_at=None)
    assert outbox_claim(claimer="relay-1", limit=1) == []

    # When an operator unblocks it, it goes back in line with a fresh budget
    assert outbox_unblock(ids=[row.id]) == 1
    assert ids(outbox_claim(claimer="relay-1", limit=1)) == [row.id]
    row.refresh_from_db()
    assert (row.blocked_at, row.publish_attempts) == (None, 1)


def test_a_connection_failure_gives_the_rows_back_at_once_and_never_blocks_them(settings):
    settings.EVENTBUS_RELAY_MAX_ATTEMPTS = 1
    rows = outbox_rows("ok", "ok")
    outbox_claim(claimer="relay-1", limit=10)

    assert outbox_release(claimer="relay-1", ids=ids(rows), error="ConnectionError: gone") == 2

    assert ids(outbox_claim(claimer="relay-2", limit=10)) == ids(rows)
    assert {(r.last_error, r.blocked_at) for r in OutboxMessage.objects.all()} == {("ConnectionError: gone", None)}


def test_a_relay_restarted_under_its_name_frees_what_its_previous_life_held():
    rows = outbox_rows("ok", "ok")
    outbox_claim(claimer="relay-1", limit=10)
    outbox_claim(claimer="relay-2", limit=10)

    assert outbox_release_all(claimer="relay-1") == 2

    assert ids(outbox_claim(claimer="relay-1", limit=10)) == ids(rows)


def test_the_lease_must_outlast_the_confirm_wait(settings):
    settings.EVENTBUS_RELAY_LEASE_SECONDS = 10
    settings.EVENTBUS_RELAY_CONFIRM_TIMEOUT_SECONDS = 10
    outbox_rows("ok")
    with pytest.raises(ImproperlyConfigured, match="EVENTBUS_RELAY_LEASE_SECONDS"):
        outbox_claim(claimer="relay-1", limit=1)


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_claim_skips_the_rows_another_claim_is_locking():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no row locks: its IMMEDIATE transactions make the claims queue instead")
    # Given a relay in the middle of its claim, holding the locks of the first five rows
    rows = outbox_rows(*["ok"] * 10)
    locked, done = threading.Event(), threading.Event()

    def claim_in_progress() -> None:
        try:
            with transaction.atomic():
                list(OutboxMessage.objects.filter(id__in=ids(rows)[:5]).select_for_update())
                locked.set()
                done.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=claim_in_progress)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        # When a second relay claims meanwhile, it neither waits nor takes them
        claimed = outbox_claim(claimer="relay-2", limit=10)
    finally:
        done.set()
        holder.join()
    assert ids(claimed) == ids(rows)[5:]


@dataclass
class Route:
    """An exchange of the test's own: `ok.*` keys reach `ok`, `full` reaches a queue that nacks all."""

    exchange: Exchange
    ok: Queue
    full: Queue

    def received(self) -> list[str]:
        """Drain `ok`; the message ids in arrival order."""
        return [message_id for message_id, _ in self.received_from()]

    def received_from(self) -> list[tuple[str, str]]:
        """Drain `ok`; (message id, the broker user that published it) in arrival order."""
        messages = []
        while (message := self.ok.get(no_ack=True)) is not None:
            messages.append((message.properties["message_id"], message.properties.get("user_id")))
        return messages

    def unjam(self) -> None:
        """`full` messages go to `ok` from now on."""
        self.full.delete()
        self.ok.bind_to(self.exchange, routing_key="full")


@pytest.fixture
def route(broker_url: str) -> Iterator[Route]:
    name = f"relay-test-{uuid.uuid4().hex[:8]}"
    exchange = Exchange(name, type="topic", durable=False)
    api = ManagementApi(broker_url)
    publishers = {service_user(producer) for producer in producers()}
    grants = [grant for grant in pipeline_grants() if grant.user in publishers]
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        ok = Queue(f"{name}.ok", exchange, routing_key="ok.#", durable=False)(channel)
        full = Queue(f"{name}.full", exchange, routing_key="full", durable=False,
                     queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"})(channel)  # fmt: skip
        exchange(channel).declare()
        ok.declare()
        full.declare()
        for grant in grants:  # the producers may write the test's exchange too, for now
            api.grant(replace(grant, write=f"{grant.write}|^{name}$"), None)
        try:
            yield Route(exchange(channel), ok, full)
        finally:
            for grant in grants:
                api.grant(grant, None)
            for queue in (ok, full):
                queue.delete()
            exchange(channel).delete()


def event_ids(rows: list[OutboxMessage]) -> list[str]:
    return [str(row.event_id) for row in rows]


@pytest.mark.integration
def test_each_refused_message_fails_only_its_own_row_and_its_batch_neighbours_are_sent(route):
    # Given a batch where one message will be nacked, one returned unroutable, one sent to a missing exchange
    ok = outbox_rows("ok.1", "ok.2", "ok.3", exchange=route.exchange.name)
    nacked, unroutable = outbox_rows("full", "nowhere", exchange=route.exchange.name)
    (missing,) = outbox_rows("ok.4", exchange=f"{route.exchange.name}-missing")

    # When a relay publishes it
    sent = sweep(name="relay-1")

    # Then the neighbours went out once, in id order, and are marked sent by the relay ...
    assert sent == 3
    assert route.received() == event_ids(ok)
    sent_rows = OutboxMessage.objects.filter(id__in=ids(ok))
    assert {(row.sent_by, row.publish_attempts, row.last_error) for row in sent_rows} == {("relay-1", 1, "")}
    # ... while each refused row stays unsent with its own error, an attempt counted, and a backoff
    errors = {}
    for row in OutboxMessage.objects.filter(id__in=[nacked.id, unroutable.id, missing.id]):
        assert row.sent_at is None and row.blocked_at is None and row.claimed_until is None
        assert row.publish_attempts == 1 and row.next_attempt_at > timezone.now()
        errors[row.id] = row.last_error
    assert "nacked" in errors[nacked.id]
    assert "unroutable" in errors[unroutable.id] and "nowhere" in errors[unroutable.id]
    assert "does not exist" in errors[missing.id]


@pytest.mark.integration
def test_a_row_past_its_attempts_is_blocked_and_skipped_until_unblocked(route, settings):
    settings.EVENTBUS_RELAY_MAX_ATTEMPTS = 3
    # Given a row the broker refuses, on its last attempt
    (row,) = outbox_rows("full", exchange=route.exchange.name)
    OutboxMessage.objects.update(publish_attempts=2)

    # When it fails once more, it is blocked
    assert sweep(name="relay-1") == 0
    row.refresh_from_db()
    assert row.blocked_at is not None and row.sent_at is None and row.publish_attempts == 3
    assert "nacked" in row.last_error

    # And relays skip it from then on, even once the cause is gone
    route.unjam()
    assert sweep(name="relay-1") == 0 and sweep(name="relay-2") == 0
    assert OutboxMessage.objects.get().publish_attempts == 3 and route.received() == []

    # When an operator unblocks it, it goes out
    out = io.StringIO()
    call_command("relay", "--unblock", str(row.id), "999999", stdout=out)
    assert out.getvalue().strip() == "unblocked 1 of 2 row(s)"
    assert sweep(name="relay-1") == 1
    row.refresh_from_db()
    assert row.sent_at is not None and row.blocked_at is None and row.publish_attempts == 1
    assert route.received() == [str(row.event_id)]


@pytest.mark.integration
def test_a_one_off_pass_cannot_take_a_leased_row_but_takes_over_an_expired_lease(route):
    # Given rows leased to a live relay still waiting for its confirms
    rows = outbox_rows("ok.1", "ok.2", "ok.3", exchange=route.exchange.name)
    outbox_claim(claimer="relay-1", limit=10)

    # When another relay makes a pass (`relay --once`), it publishes none of them
    assert sweep(name="relay-2") == 0
    assert route.received() == []
    assert set(OutboxMessage.objects.values_list("claimed_by", "sent_at")) == {("relay-1", None)}

    # When the relay's lease runs out (it died), the next pass takes the rows over
    expire_leases()
    assert sweep(name="relay-2") == 3
    assert route.received() == event_ids(rows)
    assert outbox_shares() == {"relay-2": 3}
    # and the dead relay, were it to come back, could not mark them
    assert outbox_mark_sent(claimer="relay-1", ids=ids(rows)) == 0


def test_the_beat_sweep_only_wakes_the_relays():
    # Given a relay listening for nudges
    listener = redis.Redis.from_url(django_settings.REDIS_URL).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(nudge_channel())
    outbox_rows("ok.1")

    # When beat's sweep runs, it wakes the relays and publishes nothing itself (it has no producer's credentials)
    sweep_outbox()

    assert wait_for(lambda: listener.get_message(timeout=1), what="a nudge")["data"] == b"1"
    assert OutboxMessage.objects.get().publish_attempts == 0
    listener.close()


@pytest.mark.integration
def test_each_event_leaves_as_its_producers_broker_user(route):
    # Given a batch with rows of three producers, interleaved
    placed = outbox_rows("ok.1", exchange=route.exchange.name)
    reserved = outbox_rows("ok.2", exchange=route.exchange.name, event_type="inventory.StockReserved.v1")
    authorized = outbox_rows("ok.3", exchange=route.exchange.name, event_type="payments.PaymentAuthorized.v1")
    confirmed = outbox_rows("ok.4", exchange=route.exchange.name, event_type="orders.OrderConfirmed.v1")

    # When a relay publishes it
    assert sweep(name="relay-1") == 4

    # Then each went out on its producer's connection, with its producer as the user RabbitMQ vouched for
    received = dict(route.received_from())
    assert received == {
        **dict.fromkeys(event_ids(placed + confirmed), "orders"),
        **dict.fromkeys(event_ids(reserved), "inventory"),
        **dict.fromkeys(event_ids(authorized), "payments"),
    }


def test_every_producers_rows_are_sent_before_any_confirm_is_awaited():
    # Given a batch with rows of two producers
    rows = outbox_rows("ok.1") + outbox_rows("ok.2", event_type="inventory.StockReserved.v1")
    calls: list[str] = []

    class Publisher:
        def __init__(self, user: str) -> None:
            self.user = user

        def send(self, outgoing) -> None:
            calls.append(f"send {self.user} {len(list(outgoing))}")

        def wait(self) -> dict[str, str]:
            calls.append(f"wait {self.user}")
            return {}

    publishers = SimpleNamespace(get=Publisher)

    # When a relay publishes it
    outcome = publish_rows(publishers, rows, claimer="relay-1")

    # Then both went out before it waited for either producer's confirms
    assert calls == ["send orders 1", "send inventory 1", "wait orders", "wait inventory"]
    assert sorted(outcome.confirmed) == ids(rows)


@pytest.mark.integration
def test_a_row_whose_type_names_no_producer_the_relay_can_publish_as_fails_on_its_own(route):
    # Given an unknown event type beside a good row
    (good,) = outbox_rows("ok.1", exchange=route.exchange.name)
    (unknown,) = outbox_rows("ok.2", exchange=route.exchange.name, event_type="nobody.Nothing.v1")

    assert sweep(name="relay-1") == 1

    assert route.received() == [str(good.event_id)]
    unknown.refresh_from_db()
    assert unknown.sent_at is None and "no producer to publish it as" in unknown.last_error


def test_the_relay_refuses_to_start_without_every_producers_credentials(settings):
    settings.EVENTBUS_PUBLISHER_CREDENTIALS = "orders:secret"
    settings.BROKER_PASSWORD_FILE = None
    with pytest.raises(CommandError, match="EVENTBUS_PUBLISHER_CREDENTIALS has no password for inventory, payments"):
        call_command("relay", "--name", "relay-1")


@pytest.mark.integration
def test_relay_once_publishes_under_its_name(route):
    outbox_rows("ok.1", exchange=route.exchange.name)
    out = io.StringIO()
    call_command("relay", "--once", "--name", "relay-7", stdout=out)
    assert out.getvalue().strip() == "published 1 event(s)"
    assert outbox_shares() == {"relay-7": 1}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_two_relays_side_by_side_publish_every_row_exactly_once(route):
    # Given a few thousand committed rows
    count = 3000
    rows = outbox_rows(*(f"ok.{n}" for n in range(count)), exchange=route.exchange.name)

    # When two relays run side by side, in small batches so that they claim again and again
    relays = [Relay(name=f"relay-{n}", batch_size=40, poll_seconds=0.2) for n in (1, 2)]

    def run(relay: Relay) -> None:
        try:
            relay.run()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(relay,)) for relay in relays]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: not OutboxMessage.objects.filter(sent_at__isnull=True).exists(), timeout=120,
                 what="every row marked sent")  # fmt: skip
    finally:
        for relay in relays:
            relay.stop()
        for thread in threads:
            thread.join(timeout=30)

    # Then the bound queue got every row exactly once, each row was tried once, and the relays' shares add up
    received = route.received()
    assert len(received) == count and set(received) == set(event_ids(rows))
    assert set(OutboxMessage.objects.values_list("publish_attempts", flat=True)) == {1}
    shares = outbox_shares()
    assert sum(shares.values()) == count, shares


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_batch_confirmed_while_the_database_refused_writes_is_marked_later_not_published_again(route, monkeypatch):
    # Given a relay whose first attempt to mark its confirmed batch sent fails: the database refuses writes
    rows = outbox_rows("ok.1", "ok.2", exchange=route.exchange.name)
    relay = Relay(name="relay-1", batch_size=10, poll_seconds=0.1)
    marks = []

    def mark_sent(**kwargs):
        marks.append(list(kwargs["ids"]))
        if len(marks) == 1:
            raise OperationalError("attempt to write a readonly database")
        relay.stop()
        return outbox_mark_sent(**kwargs)

    monkeypatch.setattr("eventbus.relay.outbox_mark_sent", mark_sent)

    # When it carries on after the error
    relay.run()

    # Then it marked the same batch as soon as it could, and the rows went out once, tried once
    assert marks[:2] == [ids(rows), ids(rows)]
    assert route.received() == event_ids(rows)
    assert set(OutboxMessage.objects.values_list("sent_by", "publish_attempts")) == {("relay-1", 1)}


def test_the_admin_lists_blocked_rows_and_unblocks_them(admin_client):
    # Given a blocked row and a pending one
    blocked, _pending = outbox_rows("full", "ok")
    OutboxMessage.objects.filter(pk=blocked.pk).update(blocked_at=timezone.now(), publish_attempts=10, last_error="x")

    # Then the changelist counts the blocked row and its filter finds it
    page = admin_client.get("/admin/eventbus/outboxmessage/?state=blocked").content.decode()
    assert "1 of them blocked" in page and f"/admin/eventbus/outboxmessage/{blocked.pk}/change/" in page
    assert f"/admin/eventbus/outboxmessage/{_pending.pk}/change/" not in page

    # When an operator unblocks it, it waits for a relay again, with a fresh attempt budget
    admin_client.post("/admin/eventbus/outboxmessage/", {"action": "unblock", "_selected_action": [blocked.pk]})
    blocked.refresh_from_db()
    assert (blocked.blocked_at, blocked.publish_attempts) == (None, 0)


def test_on_postgresql_a_claim_is_one_statement(django_assert_num_queries):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite claims in an IMMEDIATE transaction: a lone UPDATE there would begin deferred")
    # Given three unsent rows
    rows = outbox_rows("ok", "ok", "ok")

    # When a relay claims two: one round trip, with no transaction around it
    with django_assert_num_queries(1):
        claimed = outbox_claim(claimer="relay-1", limit=2)

    # Then it got the oldest two, whole as the relay publishes them, leased and counted
    assert ids(claimed) == ids(rows)[:2]
    assert [row.body for row in claimed] == [row.body for row in rows[:2]]
    assert all(row.created_at == original.created_at for row, original in zip(claimed, rows, strict=False))
    leased = OutboxMessage.objects.filter(claimed_by="relay-1", publish_attempts=1, claimed_until__isnull=False)
    assert sorted(leased.values_list("id", flat=True)) == ids(rows)[:2]
