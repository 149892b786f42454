"""Orders in the admin: place an order with inline lines (through the same service as the API),
and watch it: status, legs, and the timeline of its saga with links to Flower."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from orders.models import CatalogProduct, Order, OrderLine
from orders.selectors import order_timeline
from orders.services import PAYMENT_TOKEN, LineRequest, OrderRejected, order_check, order_place


class OrderAddForm(forms.ModelForm):
    payment_token = forms.RegexField(
        PAYMENT_TOKEN,
        initial="tok_visa",
        help_text="Demo gateway: tok_decline is declined, tok_flaky fails twice and then succeeds.",
        error_messages={"invalid": "Expected a payment token like 'tok_visa'."},
    )

    class Meta:
        model = Order
        fields = ["customer_email"]


class LineFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        lines = [
            LineRequest(form.cleaned_data["product"].sku, form.cleaned_data["quantity"])
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        try:
            order_check(items=lines)
        except OrderRejected as rejected:
            raise ValidationError([message for messages in rejected.errors.values() for message in messages]) from None

    # The lines are created by order_place, never saved through the formset; the admin's change
    # message still looks for what the formset saved.
    new_objects = changed_objects = deleted_objects = ()


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    formset = LineFormSet
    autocomplete_fields = ["product"]
    fields = ["product", "quantity", "unit_price"]
    readonly_fields = ["unit_price"]

    def get_extra(self, request: HttpRequest, obj: Order | None = None, **kwargs) -> int:
        return 0 if obj else 2

    def has_change_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return obj is None

    def has_delete_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False


class StatusFilter(admin.SimpleListFilter):
    """Status with how many orders each has."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        counts = dict(Order.objects.values_list("status").annotate(n=Count("id")))
        return [(value, f"{label} ({counts.get(value, 0)})") for value, label in Order.Status.choices]

    def queryset(self, request, queryset):
        return queryset.filter(status=self.value()) if self.value() else queryset


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "customer_email", "status", "total_amount", "currency", "stock_leg", "payment_leg",
                    "created_at"]  # fmt: skip
    list_filter = [StatusFilter, "stock_leg", "payment_leg", "created_at"]
    search_fields = ["id", "customer_email", "cancel_reason"]
    date_hierarchy = "created_at"
    inlines = [OrderLineInline]
    readonly_fields = [
        "id", "customer_email", "status", "cancel_reason", "total_amount", "currency",
        "stock_leg", "stock_reason", "payment_leg", "payment_reason", "created_at", "decided_at", "timeline",
    ]  # fmt: skip

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = OrderAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_fields(self, request, obj=None):
        return self.readonly_fields if obj else ["customer_email", "payment_token"]

    def has_change_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False  # an order changes only through its saga; its page is for watching

    def has_delete_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False

    def response_add(self, request: HttpRequest, obj: Order, post_url_continue=None):
        """Open the new order's page, where its saga can be watched, unless another add was asked for."""
        if "_addanother" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(request, f"Order {obj.pk} placed; it is pending until stock and payment answer.")
        return HttpResponseRedirect(reverse("admin:orders_order_change", args=[obj.pk]))

    def save_model(self, request, obj, form, change) -> None:
        """Nothing to save yet on add: the order is placed with its lines in save_related."""

    def save_related(self, request, form, formsets, change) -> None:
        if change:
            return
        lines = [
            LineRequest(line.cleaned_data["product"].sku, line.cleaned_data["quantity"])
            for formset in formsets
            for line in formset.forms
            if line.cleaned_data and not line.cleaned_data.get("DELETE")
        ]
        order = order_place(
            customer_email=form.cleaned_data["customer_email"],
            payment_token=form.cleaned_data["payment_token"],
            items=lines,
        )
        # The admin goes on with form.instance (log entry, redirect): make it the placed order.
        form.instance.__dict__.update({k: v for k, v in order.__dict__.items() if not k.startswith("_")})
        form.instance._state.adding = False

    @admin.display(description="Timeline")
    def timeline(self, order: Order) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            (
                (entry.at.strftime("%H:%M:%S.%f")[:-3], entry.type, entry.event_id[:8],
                 "published" if entry.published_at else "waiting in the outbox", _handler_links(entry.handlers))
                for entry in order_timeline(order_id=order.id)
            ),
        )  # fmt: skip
        return format_html('<table class="order-timeline">{}{}</table>', TIMELINE_HEADER, rows)


TIMELINE_HEADER = mark_safe(
    "<tr><th>time</th><th>event</th><th>id</th><th>relay</th><th>handler tasks (open in Flower)</th></tr>"
)


def _handler_links(runs) -> str:
    if not runs:
        return "-"
    return format_html_join(
        "",
        '<div><a href="{}/task/{}" target="_blank" rel="noopener">{}</a> <span class="task-state">{}</span>{}</div>',
        (
            (settings.FLOWER_URL, run.task_id, run.handler, run.state,
             f" (attempt {run.attempt})" if run.attempt and run.attempt > 1 else "")
            for run in runs
        ),
    )  # fmt: skip


@admin.register(CatalogProduct)
class CatalogProductAdmin(admin.ModelAdmin):
    """The orders service's copy of the catalogue, fed by inventory's ProductChanged events."""

    list_display = ["sku", "name", "price", "currency", "revision"]
    search_fields = ["sku", "name"]
    readonly_fields = ["sku", "name", "price", "currency", "revision"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
