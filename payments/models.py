"""Payments, one per order."""

import uuid

from django.db import models


class Payment(models.Model):
    """The payment of one order, authorized first and captured or voided when the order is decided,
    or expired: voided because no decision came within HOLD_EXPIRY_SECONDS."""

    class Status(models.TextChoices):
        AUTHORIZED = "authorized"
        CAPTURED = "captured"
        VOIDED = "voided"
        DECLINED = "declined"
        EXPIRED = "expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order_id = models.UUIDField(unique=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, db_index=True)
    idempotency_key = models.CharField(max_length=100, unique=True)
    gateway_reference = models.CharField(max_length=100, blank=True)
    decline_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Payment for {self.order_id} ({self.status})"
