"""Payments, read-only: they change only through the saga's events."""

from django.contrib import admin
from django.http import HttpRequest

from payments.models import Payment


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["order_id", "status", "amount", "currency", "gateway_reference", "created_at", "updated_at"]
    list_filter = ["status"]
    search_fields = ["order_id", "gateway_reference"]
    readonly_fields = ["id", "order_id", "status", "amount", "currency", "idempotency_key", "gateway_reference",
                       "decline_reason", "created_at", "updated_at"]  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        return False
