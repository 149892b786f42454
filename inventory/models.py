"""Products and their stock."""

from decimal import Decimal

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models


class Product(models.Model):
    """A sellable product; `stock_on_hand` counts units in the warehouse, `stock_reserved` those held for orders."""

    sku = models.CharField(
        primary_key=True,
        max_length=32,
        validators=[RegexValidator(r"^[A-Z0-9][A-Z0-9_-]*$", "Use upper-case letters, digits, - and _.")],
    )
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2, validators=[MinValueValidator(Decimal("0.00"))])
    currency = models.CharField(max_length=3, default="USD")
    stock_on_hand = models.PositiveIntegerField(default=0)
    stock_reserved = models.PositiveIntegerField(default=0)
    revision = models.PositiveIntegerField(default=0, help_text="Grows with each change of name or price.")

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(stock_reserved__lte=models.F("stock_on_hand")),
                name="inventory_product_reserved_within_on_hand",
            )
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"

    @property
    def available(self) -> int:
        return self.stock_on_hand - self.stock_reserved


class Reservation(models.Model):
    """Stock held for one order: all of its lines or none. Held, then committed (shipped) or released,
    or expired: released because no decision came within HOLD_EXPIRY_SECONDS."""

    class Status(models.TextChoices):
        HELD = "held"
        COMMITTED = "committed"
        RELEASED = "released"
        REJECTED = "rejected"
        EXPIRED = "expired"

    order_id = models.UUIDField(unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, db_index=True)
    lines = models.JSONField(help_text='[{"product_id": "P001", "quantity": 2}, ...]')
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Reservation for {self.order_id} ({self.status})"
