"""Orders in the admin: place an order with its lines (a form and a formset that call order_place, as the
API does), and watch it: status, legs, the timeline of its saga with links to Flower, and its trace as a
waterfall (each event's hops laid out in time, from what the pipeline records)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from eventbus.selectors import Hop, Lane, Waterfall
from orders.models import MAX_QUANTITY_PER_LINE, CatalogProduct, Order, OrderLine
from orders.selectors import order_timeline, order_waterfall
from orders.services import PAYMENT_TOKEN, LineRequest, OrderRejected, order_place


class OrderPlaceForm(forms.Form):
    """Who orders and how they pay; the lines come in a LineFormSet."""

    customer_email = forms.EmailField()
    payment_token = forms.RegexField(
        PAYMENT_TOKEN,
        initial="tok_visa",
        help_text="Demo gateway: tok_decline is declined, tok_flaky fails twice and then succeeds.",
        error_messages={"invalid": "Expected a payment token like 'tok_visa'."},
    )


class LineForm(forms.Form):
    """One line: a product of the orders service's catalogue, searched as the operator types, and a quantity."""

    product = forms.ModelChoiceField(
        CatalogProduct.objects.all(), widget=AutocompleteSelect(OrderLine._meta.get_field("product"), admin.site)
    )
    quantity = forms.IntegerField(min_value=1, max_value=MAX_QUANTITY_PER_LINE)


class BaseLineFormSet(forms.BaseFormSet):
    """The order's lines: a row each, blank rows allowed (the page offers more rows than most orders need)."""

    def line_requests(self) -> list[LineRequest]:
        """The lines filled in, as order_place takes them; rows left blank are not lines."""
        return [
            LineRequest(form.cleaned_data["product"].sku, form.cleaned_data["quantity"])
            for form in self.forms
            if form.cleaned_data
        ]


LineFormSet = forms.formset_factory(LineForm, formset=BaseLineFormSet, extra=2)
LINES_PREFIX = "lines"
# The admin's inlines.js adds and removes the line rows of the add page; it reads these options from the page.
LINES_OPTIONS = json.dumps(
    {
        "name": f"#{LINES_PREFIX}",
        "options": {"prefix": LINES_PREFIX, "addText": "Add another line", "deleteText": "Remove"},
    }
)


class OrderLineInline(admin.TabularInline):
    """An order's lines on its page, as they were placed."""

    model = OrderLine
    fields = readonly_fields = ["product", "quantity", "unit_price"]
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False

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
    change_form_template = "admin/orders/order/change_form.html"  # adds the waterfall below the lines
    fields = readonly_fields = [
        "id", "customer_email", "status", "cancel_reason", "total_amount", "currency",
        "stock_leg", "stock_reason", "payment_leg", "payment_reason", "created_at", "decided_at", "timeline",
    ]  # fmt: skip

    def get_urls(self) -> list[URLPattern]:
        """The admin's "Add order" opens place_view, at the add view's own URL and name, in its stead."""
        place = path("add/", self.admin_site.admin_view(self.place_view), name="orders_order_add")
        return [place, *(url for url in super().get_urls() if url.name != place.name)]

    def place_view(self, request: HttpRequest) -> HttpResponse:
        """Place an order through order_place, as the API does; show what is wrong with the input (nothing
        is stored then), or open the new order's page, where its saga can be watched."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        data = request.POST if request.method == "POST" else None
        form, lines = OrderPlaceForm(data), LineFormSet(data, prefix=LINES_PREFIX)
        if data is not None and form.is_valid() and lines.is_valid():
            try:
                order = order_place(
                    customer_email=form.cleaned_data["customer_email"],
                    payment_token=form.cleaned_data["payment_token"],
                    items=lines.line_requests(),
                )
            except OrderRejected as rejected:
                for field, messages in rejected.errors.items():
                    form.add_error(field if field in form.fields else None, messages)
            else:
                self.log_addition(request, order, [{"added": {}}])
                self.message_user(request, f"Order {order.pk} placed; it is pending until stock and payment answer.")
                if "_addanother" in request.POST:
                    return HttpResponseRedirect(request.path)
                return HttpResponseRedirect(reverse("admin:orders_order_change", args=[order.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Add order",
            "opts": self.opts,
            "form": form,
            "lines": lines,
            "lines_options": LINES_OPTIONS,
            "has_errors": data is not None and bool(form.errors or any(lines.errors) or lines.non_form_errors()),
            "media": self.media + form.media + lines.media + _line_rows_media(),
        }
        return TemplateResponse(request, "admin/orders/order/place.html", context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Order | None = None,
    ) -> HttpResponse:
        """The order's page, with its trace laid out as a waterfall below its lines."""
        if obj is not None:
            context["trace"] = _trace_context(order_waterfall(order_id=obj.pk))
        return super().render_change_form(request, context, add, change, form_url, obj)

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


HOP_COLUMNS = ("written", "published", "delivered", "started", "handled")
# What the stretch before each hop is called on the page.
STRETCH = {"published": "outbox", "delivered": "broker", "started": "queued", "handled": "ran"}


def _trace_context(waterfall: Waterfall) -> dict[str, Any]:
    """The waterfall as the template draws it: per lane, a cell per hop column and its bar's segments placed in
    percent of the saga's span."""
    span = max(waterfall.span, timedelta(milliseconds=1))
    template = settings.TRACE_URL_TEMPLATE
    return {
        "waterfall": waterfall,
        "span": _duration(waterfall.span),
        "trace_links": [(trace_id, template.replace("{trace_id}", trace_id) if template else "")
                        for trace_id in waterfall.trace_ids],
        "rows": [_lane_row(lane, span) for lane in waterfall.lanes],
        "flower_url": settings.FLOWER_URL,
    }  # fmt: skip


def _lane_row(lane: Lane, span: timedelta) -> dict[str, Any]:
    hops = {hop.name: hop for hop in lane.hops}
    bars = [
        {"kind": segment.kind, "title": f"{segment.kind} {_duration(segment.end - segment.start)}",
         "left": f"{segment.start / span * 100:.3f}", "width": f"{(segment.end - segment.start) / span * 100:.3f}"}
        for segment in lane.segments
    ]  # fmt: skip
    return {
        "lane": lane,
        "indent": f"{0.6 + lane.depth * 0.8 + (1.2 if lane.handler else 0):.1f}em",
        "cells": [_hop_cell(lane, hops, name) if name in hops else None for name in HOP_COLUMNS],
        "bars": bars,
    }


def _hop_cell(lane: Lane, hops: dict[str, Hop], name: str) -> dict[str, str]:
    """When the hop happened (after the saga's first event), and how long the stretch before it took."""
    hop = hops[name]
    if hop.offset is not None:
        text = f"+{_duration(hop.offset)}"
    elif lane.status == "pending":
        text = "retrying" if lane.state == "RETRY" and name == "handled" else "pending"
    else:  # a failed handling has no inbox row; one handled before receipts were recorded has no delivery time
        text = "-" if lane.status == "failed" else "not recorded"
    if name == "handled" and lane.status == "failed":
        text = f"failed {text}"
    detail = f"{STRETCH[name]} {_duration(hop.took)}" if name in STRETCH and hop.took is not None else ""
    return {"name": name, "text": text, "detail": detail, "status": "done" if hop.at else lane.status}


def _duration(delta: timedelta) -> str:
    ms = delta / timedelta(milliseconds=1)
    sign, ms = ("-" if ms < 0 else ""), abs(ms)
    if ms < 1000:
        return f"{sign}{ms:.1f} ms"
    if ms < 60_000:
        return f"{sign}{ms / 1000:.2f} s"
    return f"{sign}{ms / 60_000:.1f} min"


def _line_rows_media() -> forms.Media:
    # inlines.js after the admin's jQuery, as InlineModelAdmin.media orders them: a lone script may come first.
    jquery = "jquery.js" if settings.DEBUG else "jquery.min.js"
    return forms.Media(js=[f"admin/js/vendor/jquery/{jquery}", "admin/js/jquery.init.js", "admin/js/inlines.js"])


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
