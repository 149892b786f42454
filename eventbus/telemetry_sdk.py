"""The OpenTelemetry SDK as the pipeline sets it up (eventbus.telemetry imports this only with tracing on).

One tracer provider per process, named by OTEL_SERVICE_NAME or by its entry point, exporting through
`otlp` (OTLP over HTTP, in batches, encoded by eventbus.otlp) and/or `console` (a JSON line per span as
it ends), and the maintained instrumentations of Django, Celery, psycopg and Redis. The SDK reads its
other OTEL_* variables itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http import trace_exporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.util.types import Attributes

from eventbus import otlp

_pipeline: ExportPipeline | None = None


def set_up(service: str, exporters: Sequence[str]) -> tuple[trace.Tracer, bool]:
    """Trace this process as `service` (unless OTEL_SERVICE_NAME names it otherwise) through `exporters`,
    instrument Django, Celery, psycopg and Redis, and return the tracer of the event path's own spans, and
    whether its sampler drops every span whose parent was not sampled (eventbus.tracing.start)."""
    global _pipeline
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)
    provider.sampler = WithoutOrphanCalls(provider.sampler)  # before any tracer takes it: OTEL_TRACES_SAMPLER's
    _pipeline = ExportPipeline(exporters)
    encode_with_ours()
    provider.add_span_processor(_pipeline)
    trace.set_tracer_provider(provider)
    DjangoInstrumentor().instrument()  # before the WSGI handler loads the middleware: it adds its own
    CeleryInstrumentor().instrument()
    PsycopgInstrumentor().instrument()
    RedisInstrumentor().instrument(response_hook=name_pipeline_by_its_commands)
    return provider.get_tracer("eventbus"), follows_parent(provider.sampler.sampler)


def name_pipeline_by_its_commands(span: trace.Span, instance: object, response: object) -> None:
    """Redis's instrumentation names a pipeline's span by all its commands, in order: a cache's set_many of n keys
    makes `MSET` and n times `EXPIRE`, a new span name for every n, each a new operation in Jaeger. Name it by each
    command once (`MSET EXPIRE`); the statement attribute still lists them all."""
    if span.is_recording() and " " in (name := getattr(span, "name", "")):
        span.update_name(" ".join(dict.fromkeys(name.split(" "))))


def encode_with_ours() -> None:
    """Have OpenTelemetry's OTLP/HTTP span exporter encode its exports with eventbus.otlp.encode_spans: the same
    message, built in a fraction of the CPU. The exporter calls the encoder by its name in its module at each export."""
    trace_exporter.encode_spans = otlp.encode_spans


def follows_parent(sampler: Sampler) -> bool:
    """Whether `sampler` drops every span whose parent, local or remote, was not sampled: OpenTelemetry's
    `parentbased_*` samplers as OTEL_TRACES_SAMPLER makes them (the default among them), not `always_on`, say,
    nor a ParentBased given other samplers for such parents."""
    description = sampler.get_description()
    return description.startswith("ParentBased{") and all(
        f"{parent}ParentNotSampled:AlwaysOffSampler" in description for parent in ("remote", "local")
    )


def reopen() -> None:
    """In a forked process: export through processors of its own."""
    if _pipeline is not None:
        _pipeline.reopen()


def flush() -> None:
    """Export what is pending now (a Celery pool process ends without the atexit handler that would)."""
    if _pipeline is not None:
        _pipeline.force_flush()


class ExportPipeline(SpanProcessor):
    """The exporting span processors of this process. A forked process must not use those it inherits: their
    thread did not survive the fork, and their HTTP connection is its parent's."""

    def __init__(self, exporters: Sequence[str]) -> None:
        self.exporters = tuple(exporters)
        self.processors = self._open()

    def _open(self) -> list[SpanProcessor]:
        processors: list[SpanProcessor] = []
        if "otlp" in self.exporters:
            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        if "console" in self.exporters:
            # On the process's own standard output (a Celery worker redirects sys.stdout into its log), one
            # line per span, as each ends: readable among the other lines of `make run`, and never held back.
            console = ConsoleSpanExporter(out=sys.__stdout__, formatter=lambda span: span.to_json(indent=None) + "\n")
            processors.append(SimpleSpanProcessor(console))
        return processors

    def reopen(self) -> None:
        inherited, self.processors = self.processors, self._open()
        for processor in inherited:  # nothing is queued there: the SDK empties a forked process's queue
            processor.shutdown()

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self.processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self.processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(processor.force_flush(timeout_millis) for processor in self.processors)


# Statements of a transaction's bookkeeping: each handler's work runs in a savepoint (a batch's one per event).
# A span for each would be a fifth of an order's spans and say nothing of its work.
BOOKKEEPING = frozenset({"SAVEPOINT", "RELEASE"})  # psycopg names a span by its first word


class WithoutOrphanCalls(Sampler):
    """A sampler, except that a database query or Redis command outside any request, task or event starts no
    trace: the relay's and beat's polling would fill the tracing backend with one-span traces. Nor do a
    transaction's savepoint statements get a span (BOOKKEEPING)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and (
            name in BOOKKEEPING or not get_current_span(parent_context).get_span_context().is_valid
        ):
            return SamplingResult(Decision.DROP)
        return self.sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"WithoutOrphanCalls{{{self.sampler.get_description()}}}"
