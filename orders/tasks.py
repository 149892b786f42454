"""Periodic work of the orders service."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from orders.services import order_cancel_stale


@shared_task(name="orders.cancel_stale_orders")
def cancel_stale_orders() -> int:
    """Cancel orders still pending after ORDER_PENDING_TIMEOUT_SECONDS, with compensation."""
    return order_cancel_stale(older_than=timedelta(seconds=settings.ORDER_PENDING_TIMEOUT_SECONDS))
