"""Housekeeping tasks of the event bus."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from eventbus.relay import sweep


@shared_task(name="eventbus.ping")
def ping(payload: str = "ping") -> dict[str, str]:
    """Answer with the payload and the worker that ran it: a smoke test of broker, worker and result backend."""
    return {"reply": payload, "worker": ping.request.hostname or ""}


@shared_task(name="eventbus.sweep_outbox")
def sweep_outbox() -> int:
    """Publish outbox rows the relay has left behind (it is down or stuck); duplicates are harmless."""
    return sweep(older_than=timedelta(seconds=settings.EVENTBUS_RELAY_SWEEP_AGE_SECONDS))
