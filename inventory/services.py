"""Inventory writes."""

from decimal import Decimal

from django.db import transaction

from inventory.models import Product

DEMO_PRODUCTS = [
    ("P001", "Espresso beans 1 kg", "75.00", 100),
    ("P002", "Burr grinder", "149.00", 25),
    ("P003", "Milk jug 600 ml", "18.50", 60),
    ("P004", "Pour-over kettle", "59.90", 30),
    ("P005", "Paper filters (100)", "6.00", 200),
    ("P006", "Tamper 58 mm", "32.00", 40),
    ("P007", "Scale with timer", "45.00", 35),
    ("P008", "Cleaning tablets", "12.00", 150),
    ("P009", "Travel mug", "22.00", 80),
    ("P010", "Barista apron", "29.00", 5),
]


@transaction.atomic
def product_seed_demo() -> int:
    """Create the demo products P001..P010 that do not exist yet; return how many were created."""
    created = 0
    for sku, name, price, stock in DEMO_PRODUCTS:
        _, was_created = Product.objects.get_or_create(
            sku=sku, defaults={"name": name, "price": Decimal(price), "stock_on_hand": stock}
        )
        created += was_created
    return created
