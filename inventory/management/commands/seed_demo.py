"""Load the demo products (idempotent: existing products keep their stock)."""

from django.core.management.base import BaseCommand

from inventory.services import DEMO_PRODUCTS, product_seed_demo


class Command(BaseCommand):
    help = "Create the demo products P001..P010 when missing."

    def handle(self, *args: object, **options: object) -> None:
        created = product_seed_demo()
        self.stdout.write(f"demo products: {created} created, {len(DEMO_PRODUCTS) - created} already present")
