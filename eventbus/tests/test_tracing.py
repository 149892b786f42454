"""Trace context in events (the CloudEvents Distributed Tracing extension) and the event path's spans."""

from __future__ import annotations

import json
import logging
from ast import literal_eval
from collections.abc import Iterator

import pytest
from django.db import transaction
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from rest_framework.test import APIClient

from eventbus import tracing
from eventbus.envelope import CONTENT_TYPE, from_dict, new_event, parse
from eventbus.handling import apply_once
from eventbus.models import OutboxMessage
from eventbus.outbox import current_event, publish
from eventbus.subscriptions import handler_by_name
from eventbus.telemetry_sdk import WithoutOrphanCalls, follows_parent, name_pipeline_by_its_commands
from eventbus.tests.stand_ins import reserve_stock_doing
from tests import factories
from tests.harness import environment, python

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the event path, into memory (the process's global tracer provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.start(provider.get_tracer("test"))
    yield exporter
    tracing.start(None)


def placed(**trace_context: str):
    return new_event(factories.order_placed(), **trace_context)


def span_named(exporter: InMemorySpanExporter, name: str):
    (span,) = [span for span in exporter.get_finished_spans() if span.name == name]
    return span


# --- the trace context an event carries


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        (CALLER, TRACE_ID),
        (f"01-{TRACE_ID}-00f067aa0ba902b7-01-later-fields", TRACE_ID),  # a later version may append fields
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01-more", ""),  # version 00 may not
        (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", ""),
        (f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", ""),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", ""),
        (f"00-{TRACE_ID}-{'0' * 16}-01", ""),
        (f"00-{TRACE_ID}-00f067aa0ba902b7", ""),
        ("", ""),
        (None, ""),
        (42, ""),
    ],
)
def test_a_traceparent_is_read_as_w3c_trace_context_says(traceparent, trace_id):
    assert tracing.trace_id(traceparent) == trace_id


@pytest.mark.parametrize(
    "traceparent",
    [
        CALLER,
        f"00-{TRACE_ID}-00f067aa0ba902b7-00",
        f"00-{TRACE_ID}-00f067aa0ba902b7-03",
        f"01-{TRACE_ID}-00f067aa0ba902b7-01-more",
        f"00-{TRACE_ID}-00f067aa0ba902b7-01-more",
        f"ff-{TRACE_ID}-00f067aa0ba902b7-01",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01",
        "",
        None,
    ],
)
@pytest.mark.parametrize("tracestate", [STATE, "", "a=1,,b=2", None])
def test_a_trace_context_names_the_span_opentelemetrys_w3c_propagator_reads_from_it(traceparent, tracestate):
    headers = {key: value for key, value in (("traceparent", traceparent), ("tracestate", tracestate)) if value}
    expected = trace.get_current_span(TraceContextTextMapPropagator().extract(headers)).get_span_context()
    assert tracing._remote(traceparent, tracestate) == expected
    assert trace.get_current_span(tracing._parent(traceparent, tracestate)).get_span_context() == expected
    assert tracing._sampled_flag(traceparent) is (expected.trace_flags.sampled or not expected.is_valid)


@pytest.mark.parametrize(
    ("tracestate", "valid"),
    [
        (STATE, True),
        ("tenant@vendor=x, ,b=2", True),
        ("", True),
        ("UPPER=x", False),
        ("a=b=c", False),
        ("novalue", False),
        (",".join(f"k{i}=v" for i in range(33)), False),
        (7, False),
    ],
)
def test_a_tracestate_is_read_as_w3c_trace_context_says(tracestate, valid):
    assert tracing.valid_tracestate(tracestate) is valid


def test_an_event_keeps_its_trace_context_on_the_wire_and_omits_it_when_it_has_none():
    event = placed(traceparent=CALLER, tracestate=STATE)
    wire = json.loads(event.to_json())
    assert (wire["traceparent"], wire["tracestate"]) == (CALLER, STATE)
    again = parse(event.to_json(), CONTENT_TYPE)
    assert (again.traceparent, again.tracestate) == (CALLER, STATE)
    assert "traceparent" not in placed().to_dict() and "tracestate" not in placed().to_dict()


@pytest.mark.parametrize("traceparent", ["garbage", f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", 17, ["x"]])
def test_a_malformed_traceparent_is_dropped_and_the_event_is_not_poison(traceparent, caplog):
    wire = {**placed().to_dict(), "traceparent": traceparent, "tracestate": STATE}

    with caplog.at_level(logging.DEBUG, logger="eventbus.tracing"):
        event = from_dict(wire)

    assert (event.traceparent, event.tracestate) == ("", "")
    assert "dropping the malformed traceparent" in caplog.text


def test_a_malformed_tracestate_is_dropped_alone(caplog):
    wire = {**placed().to_dict(), "traceparent": CALLER, "tracestate": "Not=Valid"}
    with caplog.at_level(logging.DEBUG, logger="eventbus.tracing"):
        event = from_dict(wire)
    assert (event.traceparent, event.tracestate) == (CALLER, "")
    assert "dropping the malformed tracestate" in caplog.text


@pytest.mark.django_db
def test_with_tracing_off_an_event_published_by_a_handler_continues_the_handled_events_trace_context():
    cause = placed(traceparent=CALLER, tracestate=STATE)
    token = current_event.set(cause)
    try:
        with transaction.atomic():
            event = publish(factories.order_placed())
    finally:
        current_event.reset(token)
    assert (event.traceparent, event.tracestate) == (CALLER, STATE)
    assert OutboxMessage.objects.get().body["traceparent"] == CALLER


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"HTTP_TRACEPARENT": CALLER, "HTTP_TRACESTATE": STATE}, {"traceparent": CALLER, "tracestate": STATE}),
        ({"HTTP_TRACEPARENT": f" {CALLER} "}, {"traceparent": CALLER}),
        ({"HTTP_TRACEPARENT": "00-not-a-trace-01"}, {}),
        ({}, {}),
    ],
)
def test_with_tracing_off_an_api_request_with_a_traceparent_header_continues_the_callers_trace(headers, expected):
    # Given a product, and an API client that may send the W3C headers
    factories.product("P001", stock=5)
    body = {"customer_email": "a@example.com", "payment_token": "tok_visa", "items": [{"product_id": "P001",
            "quantity": 1}]}  # fmt: skip

    # When it places an order
    response = APIClient().post("/api/orders/", body, format="json", **headers)

    # Then the OrderPlaced event carries the caller's trace context, or none
    assert response.status_code == 201, response.content
    event = OutboxMessage.objects.get(event_type="orders.OrderPlaced.v1").body
    assert {key: event[key] for key in ("traceparent", "tracestate") if key in event} == expected


# --- spans


@pytest.mark.django_db
def test_publish_writes_the_event_in_a_span_of_its_own_and_the_event_names_that_span(spans):
    # Given a span of the request or handler at work
    outer_tracer = trace.get_tracer("test", tracer_provider=TracerProvider())
    with outer_tracer.start_as_current_span("request") as outer, transaction.atomic():
        # When it publishes an event
        event = publish(factories.order_placed())

    # Then the event continues the trace, as a child of the outbox write's span, itself a child of the request's
    create = span_named(spans, "create orders.OrderPlaced.v1")
    context = outer.get_span_context()
    assert create.kind is SpanKind.PRODUCER
    assert create.parent.span_id == context.span_id and create.context.trace_id == context.trace_id
    assert event.traceparent.startswith(f"00-{context.trace_id:032x}-{create.context.span_id:016x}-")
    assert create.attributes["messaging.message.id"] == event.id
    assert create.attributes["messaging.destination.name"] == "orders.events"


@pytest.mark.django_db
def test_a_lone_events_handler_span_is_a_child_of_its_task_and_what_it_publishes_continues_the_trace(spans):
    # Given an event of the caller's trace, and the handler's Celery task span running in that trace
    factories.product("P001", stock=5)
    event = placed(traceparent=CALLER)
    task_tracer = trace.get_tracer("celery", tracer_provider=TracerProvider())
    parent = trace.set_span_in_context(trace.NonRecordingSpan(tracing._span_context(event)))
    with task_tracer.start_as_current_span("run/inventory.reserve_stock", context=parent) as task_span:
        # When the handler runs
        assert apply_once(handler_by_name("inventory.reserve_stock"), event) == "done"

    # Then its span is the task span's child, and the event it published is a child of the handler's span
    process = span_named(spans, "process orders.OrderPlaced.v1")
    assert process.parent.span_id == task_span.get_span_context().span_id
    assert process.context.trace_id == int(TRACE_ID, 16) and not process.links
    assert process.attributes["eventbus.handler"] == "inventory.reserve_stock"
    create = span_named(spans, "create inventory.StockReserved.v1")
    assert create.parent.span_id == process.context.span_id
    reserved = OutboxMessage.objects.get(event_type="inventory.StockReserved.v1").body
    assert tracing.trace_id(reserved["traceparent"]) == TRACE_ID


@pytest.mark.django_db
@pytest.mark.parametrize(("flags", "calls_traced"), [("01", True), ("00", False)])
def test_a_handler_in_a_trace_not_sampled_makes_calls_without_spans_and_passes_the_trace_on(spans, flags, calls_traced):
    factories.product("P001", stock=5)
    event = placed(traceparent=f"00-{TRACE_ID}-00f067aa0ba902b7-{flags}")
    seen = []

    def reserve(data, event):
        seen.append(is_instrumentation_enabled())  # what psycopg's and Redis's instrumentation ask
        handler_by_name("inventory.reserve_stock").function(data, event)

    apply_once(reserve_stock_doing(reserve), event)

    assert seen == [calls_traced]
    assert is_instrumentation_enabled(), "only inside the handler's span"
    assert [span.name for span in spans.get_finished_spans()] == (
        ["create inventory.StockReserved.v1", "process orders.OrderPlaced.v1"] if calls_traced else []
    )
    reserved = OutboxMessage.objects.get(event_type="inventory.StockReserved.v1").body
    assert tracing.trace_id(reserved["traceparent"]) == TRACE_ID and reserved["traceparent"].endswith(f"-{flags}")


@pytest.mark.django_db
def test_in_a_batch_a_handlers_span_is_a_child_of_its_events_trace_linked_to_the_batch_task(spans):
    factories.product("P001", stock=5)
    event = placed(traceparent=CALLER)
    batch_tracer = trace.get_tracer("celery", tracer_provider=TracerProvider())
    with batch_tracer.start_as_current_span("run/inventory.handle_batch") as batch_span:  # a trace of its own
        apply_once(handler_by_name("inventory.reserve_stock"), event)

    process = span_named(spans, "process orders.OrderPlaced.v1")
    assert process.context.trace_id == int(TRACE_ID, 16)
    assert process.parent.span_id == int("00f067aa0ba902b7", 16) and process.parent.is_remote
    assert [link.context.span_id for link in process.links] == [batch_span.get_span_context().span_id]


def test_the_intake_dispatches_a_lone_event_in_its_trace_and_a_batch_in_a_trace_linked_to_each(spans):
    first, second, untraced = placed(traceparent=CALLER), placed(traceparent=f"00-{'1' * 32}-{'2' * 16}-01"), placed()

    with tracing.dispatch_span([first], "inventory.events"):
        pass
    with tracing.dispatch_span([first, second, untraced], "inventory.events"):
        pass

    lone = span_named(spans, "receive orders.OrderPlaced.v1")
    assert lone.kind is SpanKind.CONSUMER and lone.context.trace_id == int(TRACE_ID, 16)
    assert lone.parent.span_id == int("00f067aa0ba902b7", 16)
    batch = span_named(spans, "receive inventory.events")
    assert batch.parent is None and batch.attributes["messaging.batch.message_count"] == 3
    assert [link.context.trace_id for link in batch.links] == [int(TRACE_ID, 16), int("1" * 32, 16)]


@pytest.mark.django_db
def test_the_relay_publishes_each_event_in_a_span_that_is_a_child_of_its_trace_context(spans):
    factories.product("P001", stock=5)
    with transaction.atomic():
        publish(factories.order_placed())  # in the outbox write's span: the row names it
        publish(factories.order_placed())
    rows = list(OutboxMessage.objects.order_by("id"))
    create_spans = {span.context.span_id for span in spans.get_finished_spans()}
    spans.clear()

    tracing.published(rows, started=1_000, refused={str(rows[1].event_id): "nack"})

    sent = sorted(spans.get_finished_spans(), key=lambda span: span.attributes["messaging.message.id"] != str(
        rows[0].event_id))  # fmt: skip
    assert [span.name for span in sent] == ["publish orders.OrderPlaced.v1"] * 2
    assert {span.parent.span_id for span in sent} == create_spans
    assert sent[0].start_time == 1_000 and sent[0].status.status_code is StatusCode.UNSET
    assert sent[1].status.status_code is StatusCode.ERROR and sent[1].status.description == "nack"
    assert sent[0].attributes["messaging.rabbitmq.destination.routing_key"] == "order.placed"


class Asked(Sampler):
    """OpenTelemetry's default sampler (parent-based, every root sampled), counting the spans it is asked about."""

    def __init__(self) -> None:
        self.sampler, self.names = ParentBased(ALWAYS_ON), []

    def should_sample(self, parent_context, trace_id, name, *args, **kwargs) -> SamplingResult:
        self.names.append(name)
        return self.sampler.should_sample(parent_context, trace_id, name, *args, **kwargs)

    def get_description(self) -> str:
        return self.sampler.get_description()


@pytest.mark.django_db
@pytest.mark.parametrize("flags", ["00", "01"])
def test_under_a_parent_based_sampler_a_trace_not_sampled_gets_no_span_at_all_and_goes_on(flags):
    # Given the event path tracing with a sampler that drops what its parent dropped
    sampler = Asked()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.start(provider.get_tracer("test"), follows_parent=follows_parent(sampler))
    factories.product("P001", stock=5)
    event = placed(traceparent=f"00-{TRACE_ID}-00f067aa0ba902b7-{flags}")
    seen = []

    def reserve(data, event):
        seen.append(is_instrumentation_enabled())
        handler_by_name("inventory.reserve_stock").function(data, event)

    try:
        # When an event of a trace sampled or not is dispatched, handled (publishing one) and the result relayed
        with tracing.dispatch_span([event], "inventory.events"):
            carrier = tracing.injected()
        apply_once(reserve_stock_doing(reserve), event)
        reserved = OutboxMessage.objects.get(event_type="inventory.StockReserved.v1")
        tracing.published([reserved], started=1_000, refused={})
    finally:
        tracing.start(None)

    # Then a trace not sampled is passed on, marked so, without one span asked for, and its calls make none
    assert tracing.trace_id(carrier["traceparent"]) == TRACE_ID and carrier["traceparent"].endswith(f"-{flags}")
    assert tracing.trace_id(reserved.body["traceparent"]) == TRACE_ID
    assert reserved.body["traceparent"].endswith(f"-{flags}")
    expected = ["receive orders.OrderPlaced.v1", "process orders.OrderPlaced.v1",
                "create inventory.StockReserved.v1", "publish inventory.StockReserved.v1"]  # fmt: skip
    assert sampler.names == (expected if flags == "01" else [])
    assert sorted(span.name for span in exporter.get_finished_spans()) == (sorted(expected) if flags == "01" else [])
    assert seen == [flags == "01"]


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The traceparents the event path reads, in order."""
    read: list[str] = []
    remote = tracing._remote

    def counted(traceparent, tracestate):
        read.append(traceparent)
        return remote(traceparent, tracestate)

    monkeypatch.setattr(tracing, "_remote", counted)
    return read


@pytest.mark.parametrize(("root", "expected"), [(ALWAYS_ON, 2), (ALWAYS_OFF, 0)])
def test_a_batch_reads_its_events_trace_contexts_only_when_its_span_is_recorded(reads, root, expected):
    # Given a sampler that keeps or drops every batch's span (a root of its own)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(root))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.start(provider.get_tracer("test"), follows_parent=True)
    batch = [placed(traceparent=CALLER), placed(traceparent=f"00-{'1' * 32}-{'2' * 16}-01")]

    try:
        with tracing.dispatch_span(batch, "inventory.events"):
            pass
    finally:
        tracing.start(None)

    # Then the events' trace contexts are read for its links only when it is kept
    assert len(reads) == expected
    assert [len(span.links) for span in exporter.get_finished_spans()] == ([2] if expected else [])


@pytest.mark.django_db
@pytest.mark.parametrize("flags", ["00", "01"])
def test_the_relay_reads_the_trace_context_only_of_an_event_whose_trace_is_sampled(reads, flags):
    tracing.start(TracerProvider().get_tracer("test"), follows_parent=True)
    factories.product("P001", stock=5)
    with transaction.atomic():
        publish(factories.order_placed(), correlation_id="c")
    row = OutboxMessage.objects.get()
    row.body["traceparent"] = f"00-{TRACE_ID}-00f067aa0ba902b7-{flags}"

    try:
        tracing.published([row], started=1_000, refused={})
    finally:
        tracing.start(None)

    assert reads == ([row.body["traceparent"]] if flags == "01" else [])


@pytest.mark.parametrize(
    ("sampler", "follows"),
    [
        (ParentBased(ALWAYS_ON), True),  # OpenTelemetry's default, parentbased_always_on
        (ParentBasedTraceIdRatio(0.1), True),
        (ALWAYS_ON, False),  # samples a span whatever its parent was
        (TraceIdRatioBased(0.1), False),
        (ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON), False),
    ],
)
def test_the_event_path_skips_the_spans_of_a_trace_not_sampled_only_under_a_sampler_that_drops_them(sampler, follows):
    assert follows_parent(sampler) is follows


def test_a_query_outside_any_span_starts_no_trace_but_anything_else_is_sampled_as_before():
    sampler = WithoutOrphanCalls(ALWAYS_ON)
    in_a_span = trace.set_span_in_context(trace.NonRecordingSpan(tracing._span_context(placed(traceparent=CALLER))))
    assert sampler.should_sample(None, 1, "SELECT", SpanKind.CLIENT).decision is Decision.DROP
    assert sampler.should_sample(in_a_span, 1, "SELECT", SpanKind.CLIENT).decision is Decision.RECORD_AND_SAMPLE
    assert sampler.should_sample(None, 1, "run/task", SpanKind.CONSUMER).decision is Decision.RECORD_AND_SAMPLE


@pytest.mark.parametrize("statement", ["SAVEPOINT", "RELEASE"])
def test_a_savepoint_statement_gets_no_span_even_inside_a_trace(statement):
    sampler = WithoutOrphanCalls(ALWAYS_ON)
    in_a_span = trace.set_span_in_context(trace.NonRecordingSpan(tracing._span_context(placed(traceparent=CALLER))))
    assert sampler.should_sample(in_a_span, 1, statement, SpanKind.CLIENT).decision is Decision.DROP
    assert sampler.should_sample(in_a_span, 1, "UPDATE", SpanKind.CLIENT).decision is Decision.RECORD_AND_SAMPLE


@pytest.mark.parametrize(
    ("named", "renamed"),
    [("MSET EXPIRE EXPIRE EXPIRE", "MSET EXPIRE"), ("GET SET GET", "GET SET"), ("PUBLISH", "PUBLISH")],
)
def test_a_redis_pipelines_span_is_named_by_each_of_its_commands_once(named, renamed):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span(named, kind=SpanKind.CLIENT) as span:
        name_pipeline_by_its_commands(span, object(), [True])
    assert [span.name for span in exporter.get_finished_spans()] == [renamed]
    name_pipeline_by_its_commands(trace.INVALID_SPAN, object(), None)  # a span not recorded is left alone


# --- set-up, in a process of its own (the test process's global tracer provider is left alone)

PROBE = """
import sys
from orderproj.wsgi import application
from django.conf import settings
from eventbus import tracing
# redis-py imports opentelemetry.sdk.metrics by itself when it is installed; the tracing parts are ours to load.
ours = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter")
loaded = sorted({name.split(".")[1] for name in sys.modules if name.startswith(ours)})
print(repr((loaded, settings.MIDDLEWARE[0], tracing._tracer is not None)))
"""


def web_process(exporter: str, script: str = PROBE) -> list[str]:
    """The lines `script` prints in a process set up as the web's, with OTEL_TRACES_EXPORTER=`exporter`."""
    done = python(script, environment(OTEL_TRACES_EXPORTER=exporter, OTEL_SERVICE_NAME=None))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_with_tracing_off_the_web_process_loads_no_sdk_and_instruments_nothing():
    loaded, first_middleware, tracing_on = literal_eval(web_process("none")[-1])
    assert loaded == [], loaded
    assert first_middleware == "orderproj.errors.JsonApiErrors" and not tracing_on


def test_with_the_console_exporter_the_web_process_is_instrumented_and_prints_a_json_line_per_span():
    script = PROBE + "with tracing._tracer.start_as_current_span('probe'): pass\n"
    summary, span_line = web_process("console", script)[-2:]
    loaded, first_middleware, tracing_on = literal_eval(summary)
    assert loaded == ["exporter", "instrumentation", "sdk"] and tracing_on
    assert first_middleware.startswith("opentelemetry.instrumentation.django")
    span = json.loads(span_line)
    assert span["name"] == "probe" and span["resource"]["attributes"]["service.name"] == "web"


def test_an_unknown_exporter_is_refused_at_start():
    done = python("import django; django.setup()", environment(OTEL_TRACES_EXPORTER="jaeger"))
    assert done.returncode != 0 and "OTEL_TRACES_EXPORTER='jaeger'" in done.stderr
