"""The pipeline health page (staff only, HTML or JSON) and its Prometheus exposition at `/metrics`."""

from __future__ import annotations

import dataclasses
import secrets

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from eventbus import metrics as pipeline_metrics
from eventbus.health import PipelineHealth, pipeline_health, registered_figures


@never_cache
@require_GET
@staff_member_required
def health_page(request: HttpRequest) -> HttpResponse:
    """Queues, Redis, outbox, dead letters, the last event and the apps' figures, in the admin's look;
    `?format=json` for JSON."""
    health = pipeline_health()
    if request.GET.get("format") == "json":
        return JsonResponse(_as_json(health))
    figures = [(registered.description, health.figures[registered.name]) for registered in registered_figures()]
    context = {**admin.site.each_context(request), "title": "Pipeline health", "health": health, "figures": figures}
    return render(request, "eventbus/health.html", context)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The health figures and the pipeline's metrics (eventbus.metrics) in Prometheus' text format, for a staff
    session or `Authorization: Bearer <METRICS_TOKEN>`."""
    if not (_is_staff(request) or _has_metrics_token(request)):
        return HttpResponseForbidden("staff session or metrics bearer token required\n", content_type="text/plain")
    return HttpResponse(generate_latest(_registry(pipeline_health())), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _as_json(health: PipelineHealth) -> dict:
    # Each app's figures under their own name (`orders`), beside the bus's own.
    data = dataclasses.asdict(health)
    figures = data.pop("figures")
    return {**data, **figures}


def _is_staff(request: HttpRequest) -> bool:
    return request.user.is_active and request.user.is_staff


def _has_metrics_token(request: HttpRequest) -> bool:
    token = getattr(settings, "METRICS_TOKEN", "")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


def _registry(health: PipelineHealth) -> CollectorRegistry:
    # A registry per request: the figures are read fresh each scrape, never kept between requests.
    registry = CollectorRegistry()
    registry.register(_Collected(_health_families(health)))
    registry.register(pipeline_metrics.exported())
    return registry


class _Collected:
    """Metric families made for one scrape."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


def _health_families(health: PipelineHealth) -> list[GaugeMetricFamily]:
    # Metric families, not Gauge objects: with PROMETHEUS_MULTIPROC_DIR set a Gauge would write each scrape's
    # figures to the shared directory, to be read back as another process's.
    families: list[GaugeMetricFamily] = []

    def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        families.append(GaugeMetricFamily(f"orderpipe_{name}", documentation, labels=labels))
        return families[-1]

    up = gauge("up", "1 when the component answered this scrape.", ("component",))
    up.add_metric(["rabbitmq_management"], health.error is None)
    up.add_metric(["redis"], health.redis.up)
    queue_figures = {
        "queue_messages": ("messages", "Messages in the queue (ready and unacknowledged)."),
        "queue_messages_ready": ("messages_ready", "Messages ready for delivery."),
        "queue_messages_unacknowledged": ("messages_unacknowledged", "Messages delivered and not yet acknowledged."),
        "queue_consumers": ("consumers", "Consumers of the queue."),
        "queue_publish_rate": ("publish_rate", "Messages published to the queue per second."),
        "queue_deliver_rate": ("deliver_rate", "Messages delivered from the queue per second."),
        "queue_ack_rate": ("ack_rate", "Messages acknowledged per second."),
    }
    for name, (field, documentation) in queue_figures.items():
        metric = gauge(name, documentation, ("queue",))
        for queue in health.queues:
            if (value := getattr(queue, field)) is not None:
                metric.add_metric([queue.name], value)
    gauge("outbox_pending", "Outbox rows not yet published.").add_metric([], health.outbox.pending)
    gauge("outbox_lag_seconds", "Age of the oldest unpublished outbox row.").add_metric([], health.outbox.lag_seconds)
    last_sent = gauge("outbox_last_sent_timestamp_seconds", "When the relay last published.")
    if health.outbox.last_sent_at:
        last_sent.add_metric([], health.outbox.last_sent_at.timestamp())
    dead_letters = gauge("dead_letters", "Dead letters in the store.", ("state",))
    dead_letters.add_metric(["all"], health.dead_letters.total)
    dead_letters.add_metric(["unreplayed"], health.dead_letters.unreplayed)
    for figures in registered_figures():
        metric = gauge(figures.name, f"{figures.description}.", (figures.label,))
        for value, count in health.figures[figures.name].items():
            metric.add_metric([value], count)
    last_event = gauge("last_event_timestamp_seconds", "Newest event recorded in the outbox or handled.", ("stage",))
    for stage, at in (("recorded", health.last_event_recorded_at), ("handled", health.last_event_handled_at)):
        if at:
            last_event.add_metric([stage], at.timestamp())
    return families
