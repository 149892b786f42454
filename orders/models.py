"""Orders and their lines."""

import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

MAX_QUANTITY_PER_LINE = 1000


class Order(models.Model):
    """A customer's order; its status moves from pending to confirmed or cancelled."""

    class Status(models.TextChoices):
        PENDING = "pending"
        CONFIRMED = "confirmed"
        CANCELLED = "cancelled"

    class StockLeg(models.TextChoices):
        PENDING = "pending"
        RESERVED = "reserved"
        REJECTED = "rejected"

    class PaymentLeg(models.TextChoices):
        PENDING = "pending"
        AUTHORIZED = "authorized"
        DECLINED = "declined"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    customer_email = models.EmailField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    cancel_reason = models.CharField(max_length=500, blank=True)
    # The saga keeps each leg's outcome, so events in any order and repeated give the same decision.
    stock_leg = models.CharField(max_length=16, choices=StockLeg.choices, default=StockLeg.PENDING)
    stock_reason = models.CharField(max_length=500, blank=True)
    payment_leg = models.CharField(max_length=16, choices=PaymentLeg.choices, default=PaymentLeg.PENDING)
    payment_reason = models.CharField(max_length=500, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    total_amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3, default="USD")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Order {self.id} ({self.status})"


class OrderLine(models.Model):
    """One product and quantity of an order, priced when the order was placed."""

    order = models.ForeignKey(Order, related_name="lines", on_delete=models.CASCADE)
    # The orders service's own copy of the catalogue, so the admin can offer products to pick.
    product = models.ForeignKey("CatalogProduct", on_delete=models.PROTECT, db_column="product_id", related_name="+")
    quantity = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(MAX_QUANTITY_PER_LINE)])
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=models.Q(quantity__gt=0), name="orders_line_quantity_positive")]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"


class CatalogProduct(models.Model):
    """The orders service's copy of the product catalogue, kept current by inventory's ProductChanged events."""

    sku = models.CharField(primary_key=True, max_length=32)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="USD")
    revision = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["sku"]

    def __str__(self) -> str:
        return f"{self.sku} {self.name} {self.price} {self.currency}"


class IdempotencyKey(models.Model):
    """The first response to a POST with an `Idempotency-Key`, replayed when the key comes again."""

    key = models.CharField(max_length=255, unique=True)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the request body.")
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="+")
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.key
