"""Periodic work of the payments service."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from payments.services import payment_expire_stale


@shared_task(name="payments.void_stale_authorizations")
def void_stale_authorizations() -> int:
    """Void authorizations held longer than HOLD_EXPIRY_SECONDS for an order that was never decided."""
    return payment_expire_stale(older_than=timedelta(seconds=settings.HOLD_EXPIRY_SECONDS))
