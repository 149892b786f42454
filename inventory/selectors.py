"""Inventory reads."""

from django.db.models import QuerySet

from inventory.models import Product


def product_list() -> QuerySet[Product]:
    return Product.objects.order_by("sku")
