"""Retention: delete what has served its purpose, in batches, so the event bus tables stay bounded.

Sent outbox rows, inbox rows, Celery task results and replayed dead letters go once they are older
than their window (`EVENTBUS_RETENTION_*`). An unsent outbox row and a dead letter nobody has
replayed are never deleted: they are work still to do.

Why deleting inbox rows keeps effects exactly-once. A duplicate delivery is recognised by its inbox
row, so the inbox window W (`EVENTBUS_RETENTION_INBOX`) must outlive every redelivery. Redeliveries
are bounded in two ways:

- Enforced: a handler refuses an event whose CloudEvent `time` is more than W - M old (M =
  `EXPIRY_MARGIN`, for clocks and a retention run in flight) and dead-letters it as `expired`
  unless its inbox row is still there. An inbox row is written no earlier than its event's `time`
  and deleted no earlier than W after that, so every event a handler accepts still finds the row
  of an earlier handling. This holds however the event came back: a handler retry, a broker
  redelivery after a worker died, a second publication by the relay or the sweep, a dead letter
  replayed, a queue drained after an outage.
- Configured: W must be at least the longest retry schedule (EVENTBUS_MAX_ATTEMPTS x
  (EVENTBUS_RETRY_MAX_DELAY + CELERY_TASK_TIME_LIMIT)) plus ORDER_PENDING_TIMEOUT_SECONDS (after
  which the saga has decided the order anyway) plus M, so no event is refused as expired on the
  normal path. `redelivery_bound()` computes it; a system check and every retention run refuse a
  shorter W. Only an outage longer than W - M turns late events into `expired` dead letters, visible
  in the admin; replaying one takes a corrected body with a current `time`
  (`manage.py dlq replay ID --body-file`), after checking the effect was not applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import models, transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from eventbus.models import DeadLetter, InboxMessage, OutboxMessage

logger = logging.getLogger(__name__)

BATCH_SIZE = 5_000  # rows per delete transaction: short locks, and progress a crash does not undo
EXPIRY_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of row is kept once it has served its purpose."""

    outbox_sent: timedelta
    inbox: timedelta
    task_results: timedelta
    dead_letters: timedelta


@dataclass(frozen=True)
class Purge:
    """What one table lost (or would lose, in a dry run) in a retention run."""

    table: str
    cutoff: datetime
    rows: int
    complete: bool  # False when the run's time budget ran out first


def redelivery_bound() -> timedelta:
    """The shortest inbox window that outlives every retry of a handler, with the margin."""
    attempt = settings.EVENTBUS_RETRY_MAX_DELAY + settings.CELERY_TASK_TIME_LIMIT
    longest = settings.EVENTBUS_MAX_ATTEMPTS * attempt + settings.ORDER_PENDING_TIMEOUT_SECONDS
    return timedelta(seconds=longest) + EXPIRY_MARGIN


def retention_policy() -> RetentionPolicy:
    """The windows from the settings; ImproperlyConfigured when one is not positive or the inbox one is too short."""
    policy = RetentionPolicy(
        outbox_sent=settings.EVENTBUS_RETENTION_OUTBOX_SENT,
        inbox=settings.EVENTBUS_RETENTION_INBOX,
        task_results=settings.EVENTBUS_RETENTION_TASK_RESULTS,
        dead_letters=settings.EVENTBUS_RETENTION_DEAD_LETTERS,
    )
    for name, window in vars(policy).items():
        if not isinstance(window, timedelta) or window <= timedelta(0):
            raise ImproperlyConfigured(f"EVENTBUS_RETENTION_{name.upper()} must be a positive duration, got {window!r}")
    if policy.inbox < (bound := redelivery_bound()):
        raise ImproperlyConfigured(
            f"EVENTBUS_RETENTION_INBOX ({policy.inbox}) must be at least {bound}: EVENTBUS_MAX_ATTEMPTS x "
            "(EVENTBUS_RETRY_MAX_DELAY + CELERY_TASK_TIME_LIMIT) + ORDER_PENDING_TIMEOUT_SECONDS + "
            f"{EXPIRY_MARGIN} margin, or a redelivered event could find its inbox row deleted"
        )
    return policy


@checks.register()
def check_retention_policy(**_: object) -> list[checks.CheckMessage]:
    """`manage.py check` (and migrate, runserver) refuse windows that retention would refuse."""
    try:
        retention_policy()
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="eventbus.E001")]
    return []


def event_expired(event_time: str, *, now: datetime | None = None) -> bool:
    """Whether an event is too old to be deduplicated: the inbox row of its first handling may be gone.

    An event without a readable `time` cannot be judged and is not refused.
    """
    try:
        at = datetime.fromisoformat(event_time)
    except ValueError:
        return False
    if timezone.is_naive(at):
        at = at.replace(tzinfo=UTC)
    return (now or timezone.now()) - at > settings.EVENTBUS_RETENTION_INBOX - EXPIRY_MARGIN


def retention_run(
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    budget: float | None = None,
    report: Callable[[str], None] = logger.info,
) -> list[Purge]:
    """Delete (or, dry, count) every expired row, table by table, `batch_size` rows per transaction.

    `budget` (seconds) stops the run between batches; what is left goes in the next run.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    policy = retention_policy()
    now = timezone.now()
    deadline = None if budget is None else time.monotonic() + budget
    targets = [
        ("outbox (sent)", OutboxMessage, "sent_at", policy.outbox_sent),
        ("inbox", InboxMessage, "processed_at", policy.inbox),
        ("task results", TaskResult, "date_done", policy.task_results),
        ("dead letters (replayed)", DeadLetter, "replayed_at", policy.dead_letters),
    ]
    purges = []
    for table, model, field, window in targets:
        # `<field> < cutoff` is never true of NULL: unsent outbox rows and unreplayed dead letters stay.
        expired = model.objects.filter(**{f"{field}__lt": now - window})
        purges.append(_purge(table, expired, now - window, batch_size, dry_run, deadline, report))
    return purges


def _purge(
    table: str,
    expired: models.QuerySet,
    cutoff: datetime,
    batch_size: int,
    dry_run: bool,
    deadline: float | None,
    report: Callable[[str], None],
) -> Purge:
    verb = "would delete" if dry_run else "deleted"
    rows, after = 0, None
    while True:
        if deadline is not None and time.monotonic() > deadline:
            report(f"{table}: {verb} {rows} rows older than {cutoff:%Y-%m-%d %H:%M}; time budget spent, more next run")
            return Purge(table, cutoff, rows, complete=False)
        batch = expired if after is None else expired.filter(pk__gt=after)
        ids = list(batch.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        if dry_run:
            rows += len(ids)
        else:
            # A primary-key range, the age condition checked again inside the delete itself.
            with transaction.atomic():
                deleted, _ = expired.filter(pk__gte=ids[0], pk__lte=ids[-1]).delete()
            rows += deleted
        after = ids[-1]
        report(f"{table}: {verb} {rows} rows so far (up to id {after})")
    report(f"{table}: {verb} {rows} rows older than {cutoff:%Y-%m-%d %H:%M}")
    return Purge(table, cutoff, rows, complete=True)
