"""eventbus.otlp encodes spans into the very message OpenTelemetry's OTLP exporter sends."""

from __future__ import annotations

import logging

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as opentelemetrys
from opentelemetry.exporter.otlp.proto.http import trace_exporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from eventbus import otlp, telemetry_sdk

STATE = TraceState([("vendor", "value"), ("other", "x")])
REMOTE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1), STATE)
EVERY_KIND_OF_VALUE = {
    "text": "a", "empty text": "", "yes": True, "no": False, "count": 3, "zero": 0, "ratio": 0.5,
    "raw": b"\x00\x01", "words": ("a", "b"), "numbers": [1, 2], "none yet": [],
}  # fmt: skip


def recorded(resource: Resource, limits: SpanLimits | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(resource=resource, span_limits=limits)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def spans_of_every_shape() -> list[ReadableSpan]:
    web, web_spans = recorded(Resource.create({"service.name": "web"}))
    relay, relay_spans = recorded(Resource({"service.name": "relay"}, "https://opentelemetry.io/schemas/1.21.0"))
    ours = web.get_tracer("eventbus")
    psycopg = web.get_tracer("opentelemetry.instrumentation.psycopg", "0.66b1", "https://schemas.example/1")
    with ours.start_as_current_span("POST /api/orders/", kind=SpanKind.SERVER, attributes=EVERY_KIND_OF_VALUE):
        with psycopg.start_as_current_span("INSERT", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql"}):
            pass
        with ours.start_as_current_span("create orders.OrderPlaced.v1", kind=SpanKind.PRODUCER) as span:
            span.add_event("written", {"rows": 1})
            span.add_event("plain")
            span.set_status(Status(StatusCode.ERROR, "refused"))
    with ours.start_as_current_span("receive", context=set_span_in_context(NonRecordingSpan(REMOTE))) as span:
        span.set_status(Status(StatusCode.OK))
    links = [Link(REMOTE, {"why": "batch"}), Link(SpanContext(1, 2, is_remote=False))]
    with relay.get_tracer("eventbus").start_as_current_span("publish", kind=SpanKind.CONSUMER, links=links):
        pass
    limited, limited_spans = recorded(Resource({}), SpanLimits(max_attributes=1, max_events=1, max_links=1))
    with limited.get_tracer("eventbus").start_as_current_span("over", attributes={"a": 1, "b": 2}, links=links) as span:
        span.add_event("one")
        span.add_event("two")
    unscoped = ReadableSpan("unscoped", context=SpanContext(3, 4, is_remote=False), resource=Resource({}),
                            attributes={"nothing": None, "nested": {"k": 1}}, start_time=1, end_time=2)  # fmt: skip
    return [*web_spans.get_finished_spans(), *relay_spans.get_finished_spans(), *limited_spans.get_finished_spans(),
            unscoped, *web_spans.get_finished_spans()]  # fmt: skip


def test_every_shape_of_span_is_encoded_as_opentelemetrys_exporter_encodes_it():
    spans = spans_of_every_shape()
    ours = otlp.encode_spans(spans)
    assert ours == opentelemetrys(spans)
    assert ours.SerializePartialToString() == opentelemetrys(spans).SerializePartialToString()
    # web (its two scopes), relay, and the two equal empty resources as one (the limited span's scope and none)
    assert [len(group.scope_spans) for group in ours.resource_spans] == [2, 1, 2]
    assert otlp.encode_spans([]) == opentelemetrys([])


def test_a_value_that_cannot_be_encoded_is_logged_and_left_out_alone(caplog):
    span = ReadableSpan("odd", context=SpanContext(3, 4, is_remote=False), resource=Resource({}),
                        attributes={"kept": "yes", "odd": object(), "also kept": 1})  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="eventbus.otlp"):
        (encoded,) = otlp.encode_spans([span]).resource_spans[0].scope_spans[0].spans
    assert [pair.key for pair in encoded.attributes] == ["kept", "also kept"]
    assert "Failed to encode key odd" in caplog.text


def test_the_otlp_exporter_encodes_with_it_once_tracing_is_set_up():
    assert trace_exporter.encode_spans is opentelemetrys
    telemetry_sdk.encode_with_ours()
    try:
        assert trace_exporter.encode_spans is otlp.encode_spans
    finally:
        trace_exporter.encode_spans = opentelemetrys
    # The exporter looks the name up in its module each time it exports, so the replacement is what it calls.
    assert "encode_spans" in trace_exporter.OTLPSpanExporter.export.__code__.co_names
