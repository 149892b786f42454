"""Housekeeping tasks of the event bus."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from eventbus.relay import sweep
from eventbus.retention import retention_run


@shared_task(name="eventbus.ping")
def ping(payload: str = "ping") -> dict[str, str]:
    """Answer with the payload and the worker that ran it: a smoke test of broker, worker and result backend."""
    return {"reply": payload, "worker": ping.request.hostname or ""}


@shared_task(name="eventbus.sweep_outbox")
def sweep_outbox() -> int:
    """Publish outbox rows no relay has taken (they are down or stuck); it claims rows like a relay,
    so it never publishes one that a live relay holds."""
    return sweep(older_than=timedelta(seconds=settings.EVENTBUS_RELAY_SWEEP_AGE_SECONDS))


@shared_task(name="eventbus.retention")
def retention() -> dict[str, int]:
    """Delete sent outbox rows, inbox rows, task results and replayed dead letters past their windows."""
    # Within the soft time limit; a backlog (the first run on a big database) goes on in a follow-up run
    # queued behind the tasks waiting meanwhile, instead of holding the worker.
    purges = retention_run(budget=settings.CELERY_TASK_SOFT_TIME_LIMIT / 2)
    if not all(purge.complete for purge in purges):
        retention.delay()
    return {purge.table: purge.rows for purge in purges}
