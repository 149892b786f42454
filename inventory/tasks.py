"""Periodic work of the inventory service."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from inventory.services import reservation_expire_stale


@shared_task(name="inventory.release_stale_holds")
def release_stale_holds() -> int:
    """Release stock held longer than HOLD_EXPIRY_SECONDS for an order that was never decided."""
    return reservation_expire_stale(older_than=timedelta(seconds=settings.HOLD_EXPIRY_SECONDS))
