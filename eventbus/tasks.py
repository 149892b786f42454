"""Housekeeping tasks of the event bus."""

from celery import shared_task


@shared_task(name="eventbus.ping")
def ping(payload: str = "ping") -> dict[str, str]:
    """Answer with the payload and the worker that ran it: a smoke test of broker, worker and result backend."""
    return {"reply": payload, "worker": ping.request.hostname or ""}
