"""Inventory reads. Availability comes from the Redis cache the stock services keep current."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

from django.core.cache import cache
from redis.exceptions import RedisError

from inventory.models import Product

logger = logging.getLogger(__name__)
AVAILABILITY_TTL = 300  # seconds; a missed refresh heals itself from the database after this


def availability_key(sku: str) -> str:
    return f"inventory:available:{sku}"


@dataclass(frozen=True)
class ProductAvailability:
    product_id: str
    name: str
    price: Decimal
    currency: str
    available: int


def product_list_available() -> list[ProductAvailability]:
    """Every product with its price and the units new orders can still get."""
    products = list(Product.objects.order_by("sku"))
    keys = [availability_key(p.sku) for p in products]
    try:
        cached = cache.get_many(keys)
        missing = {key: p.available for key, p in zip(keys, products, strict=True) if key not in cached}
        if missing:
            cache.set_many(missing, timeout=AVAILABILITY_TTL)
    except RedisError as error:
        logger.warning("availability cache unreachable, reading the database: %s", error)
        cached = {}
    return [
        ProductAvailability(p.sku, p.name, p.price, p.currency, cached.get(key, p.available))
        for key, p in zip(keys, products, strict=True)
    ]
