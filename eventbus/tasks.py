"""Housekeeping tasks of the event bus."""

from celery import shared_task
from django.conf import settings

from eventbus.outbox import nudge_relay
from eventbus.retention import retention_run


@shared_task(name="eventbus.ping")
def ping(payload: str = "ping") -> dict[str, str]:
    """Answer with the payload and the worker that ran it: a smoke test of broker, worker and result backend."""
    return {"reply": payload, "worker": ping.request.hostname or ""}


@shared_task(name="eventbus.sweep_outbox")
def sweep_outbox() -> None:
    """Wake the relays. Publishing is theirs alone: only they hold the producers' broker credentials. A relay
    publishes what a dead one left behind once that one's lease runs out, on a nudge or at its next poll."""
    nudge_relay()


@shared_task(name="eventbus.retention")
def retention() -> dict[str, int]:
    """Delete sent outbox rows, inbox rows, task results and replayed dead letters past their windows."""
    # Within the soft time limit; a backlog (the first run on a big database) goes on in a follow-up run
    # queued behind the tasks waiting meanwhile, instead of holding the worker.
    purges = retention_run(budget=settings.CELERY_TASK_SOFT_TIME_LIMIT / 2)
    if not all(purge.complete for purge in purges):
        retention.delay()
    return {purge.table: purge.rows for purge in purges}
