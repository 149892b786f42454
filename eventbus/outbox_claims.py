"""Outbox rows as units of work: leased to one relay at a time, marked by their leaseholder only.

Every relay, and the beat sweep, goes through `outbox_claim`, so two of them never hold a row
at once. On PostgreSQL the claim locks its batch with FOR UPDATE SKIP LOCKED and relays take
disjoint batches side by side; SQLite's IMMEDIATE transactions make the same claim atomic. A
relay that dies keeps its rows only until its lease runs out. Each try counts an attempt; a row
the broker keeps refusing waits longer each time, then is blocked until an operator unblocks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from eventbus.handling import backoff
from eventbus.models import OutboxMessage
from eventbus.outbox import nudge_relay

# What the relay reads of a claimed row (publisher_of reads the type; the publish-age metric, created_at).
PUBLISHED_FIELDS = ("id", "event_id", "event_type", "exchange", "routing_key", "body", "created_at")


def lease() -> timedelta:
    """How long a claim holds; it must outlast the confirm wait, or a slow batch is taken over."""
    seconds = settings.EVENTBUS_RELAY_LEASE_SECONDS
    if seconds <= settings.EVENTBUS_RELAY_CONFIRM_TIMEOUT_SECONDS:
        raise ImproperlyConfigured(
            "EVENTBUS_RELAY_LEASE_SECONDS must exceed EVENTBUS_RELAY_CONFIRM_TIMEOUT_SECONDS "
            f"({seconds:g} <= {settings.EVENTBUS_RELAY_CONFIRM_TIMEOUT_SECONDS:g})"
        )
    return timedelta(seconds=seconds)


def outbox_claim(*, claimer: str, limit: int) -> list[OutboxMessage]:
    """Lease up to `limit` publishable rows, oldest first, to `claimer`: unsent, not blocked, not leased
    to anyone, past their backoff. Counts one attempt each."""
    now = timezone.now()
    until = now + lease()
    if connection.vendor == "postgresql":
        return _claim_in_one_statement(claimer=claimer, limit=limit, now=now, until=until)
    rows = OutboxMessage.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
        sent_at__isnull=True,
        blocked_at__isnull=True,
    )
    with transaction.atomic():
        claimed = list(rows.order_by("id").select_for_update(skip_locked=True).only(*PUBLISHED_FIELDS)[:limit])
        OutboxMessage.objects.filter(id__in=[row.id for row in claimed]).update(
            claimed_by=claimer,
            claimed_until=until,
            publish_attempts=F("publish_attempts") + 1,
            last_attempt_at=now,
        )
    return claimed


# PostgreSQL: the same claim as one UPDATE ... RETURNING round trip, instead of BEGIN, SELECT ... FOR UPDATE SKIP
# LOCKED, UPDATE and COMMIT. It is on the path of every event, between its commit and its publish. (SQLite keeps
# the transaction: a lone UPDATE there begins deferred, and could fail to take the write lock without waiting.)
# Its WHERE repeats outbox_claim's filter, and must change with it: compiling that queryset into the subquery on
# each claim instead cost about 0.9 ms, most of what the one statement saves (timed in the relay, not kept).
_CLAIM = """
UPDATE {table} SET
    claimed_by = %(claimer)s,
    claimed_until = %(until)s,
    publish_attempts = publish_attempts + 1,
    last_attempt_at = %(now)s
WHERE id IN (
    SELECT id FROM {table}
    WHERE sent_at IS NULL AND blocked_at IS NULL
        AND (claimed_until IS NULL OR claimed_until < %(now)s)
        AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING {fields}
"""


def _claim_in_one_statement(*, claimer: str, limit: int, now: datetime, until: datetime) -> list[OutboxMessage]:
    meta = OutboxMessage._meta
    sql = _CLAIM.format(
        table=meta.db_table,
        fields=", ".join(meta.get_field(name).column for name in PUBLISHED_FIELDS),
    )
    params = {"claimer": claimer, "until": until, "now": now, "limit": limit}
    claimed = list(OutboxMessage.objects.raw(sql, params))
    return sorted(claimed, key=lambda row: row.id)  # RETURNING keeps no order


def _held_by(claimer: str, ids: Iterable[int]):
    # A relay that outlived its lease may find its rows taken over: it then leaves them alone.
    return OutboxMessage.objects.filter(id__in=list(ids), claimed_by=claimer, sent_at__isnull=True)


def outbox_mark_sent(*, claimer: str, ids: Iterable[int]) -> int:
    """Mark the rows `claimer` still holds among `ids` as sent by it; return how many."""
    return _held_by(claimer, ids).update(sent_at=timezone.now(), sent_by=claimer, claimed_until=None)


def outbox_record_failures(*, claimer: str, failures: dict[int, str]) -> None:
    """Give back the rows the broker refused, with why: each is tried again after a backoff, or
    blocked once it has used EVENTBUS_RELAY_MAX_ATTEMPTS."""
    now = timezone.now()
    with transaction.atomic():
        for row in _held_by(claimer, failures).select_for_update().only("id", "publish_attempts"):
            blocked = row.publish_attempts >= settings.EVENTBUS_RELAY_MAX_ATTEMPTS
            OutboxMessage.objects.filter(id=row.id).update(
                last_error=failures[row.id],
                claimed_until=None,
                blocked_at=now if blocked else None,
                next_attempt_at=None if blocked else now + timedelta(seconds=backoff(row.publish_attempts - 1)),
            )


def outbox_release(*, claimer: str, ids: Iterable[int], error: str) -> int:
    """Give back rows whose fate is unknown because the broker went away; no fault of theirs, so
    they are free again at once and never blocked for it."""
    return _held_by(claimer, ids).update(claimed_until=None, last_error=error)


def outbox_release_all(*, claimer: str) -> int:
    """Give back every row leased to `claimer`: a relay restarting under its old name frees what
    its previous life held instead of waiting out the lease. Names must be unique among live relays."""
    return OutboxMessage.objects.filter(claimed_by=claimer, claimed_until__isnull=False, sent_at__isnull=True).update(
        claimed_until=None
    )


def outbox_unblock(*, ids: Iterable[int]) -> int:
    """Put blocked rows back in line with a fresh attempt budget and wake the relay; return how many."""
    unblocked = OutboxMessage.objects.filter(id__in=list(ids), blocked_at__isnull=False, sent_at__isnull=True).update(
        blocked_at=None, next_attempt_at=None, publish_attempts=0
    )
    if unblocked:
        transaction.on_commit(nudge_relay)
    return unblocked


def outbox_shares() -> dict[str, int]:
    """Sent rows per relay (or sweep) name: how the work was shared."""
    counts = OutboxMessage.objects.filter(sent_at__isnull=False).values_list("sent_by").annotate(n=Count("id"))
    return dict(counts.order_by())
