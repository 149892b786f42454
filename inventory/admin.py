"""Products with their stock and reservations; edits go through the inventory services."""

from django.contrib import admin
from django.http import HttpRequest

from inventory.models import Product, Reservation
from inventory.services import product_upsert


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "price", "currency", "stock_on_hand", "stock_reserved", "available", "revision"]
    search_fields = ["sku", "name"]
    readonly_fields = ["stock_reserved", "revision"]
    fields = ["sku", "name", "price", "currency", "stock_on_hand", "stock_reserved", "revision"]

    def get_readonly_fields(self, request: HttpRequest, obj: Product | None = None) -> list[str]:
        return [*self.readonly_fields, "sku"] if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Product, form, change: bool) -> None:
        # Through the service: a new name or price is announced (ProductChanged) to the orders catalogue.
        saved = product_upsert(
            sku=obj.sku, name=obj.name, price=obj.price, currency=obj.currency, stock_on_hand=obj.stock_on_hand
        )
        obj.__dict__.update(revision=saved.revision, stock_reserved=saved.stock_reserved)

    def has_delete_permission(self, request: HttpRequest, obj: Product | None = None) -> bool:
        return False


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ["order_id", "status", "created_at", "updated_at"]
    list_filter = ["status"]
    search_fields = ["order_id"]
    readonly_fields = ["order_id", "status", "lines", "reason", "created_at", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
