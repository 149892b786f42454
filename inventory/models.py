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
    stock_on_hand = models.PositiveIntegerField(default=0)
    stock_reserved = models.PositiveIntegerField(default=0)

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
