"""Spans encoded for OTLP: the message OpenTelemetry's exporter sends, built in place.

OpenTelemetry's OTLP exporter (encode_spans of opentelemetry-exporter-otlp-proto-common) makes a protobuf
message of each value, attribute, span and group, and protobuf copies each into its parent when it is
assigned there; in the relay, its export thread was the largest part of what tracing cost (docs/benchmark.md).
`encode_spans` here builds the same ExportTraceServiceRequest, field for field, adding each part in place to
its parent, in a fraction of the CPU. eventbus.telemetry_sdk has OpenTelemetry's OTLP/HTTP exporter call it;
the rest of that exporter (retries, compression, the size limit, its own metrics) is as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, SpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

logger = logging.getLogger(__name__)

KINDS = {
    SpanKind.INTERNAL: Span.SpanKind.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: Span.SpanKind.SPAN_KIND_SERVER,
    SpanKind.CLIENT: Span.SpanKind.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: Span.SpanKind.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: Span.SpanKind.SPAN_KIND_CONSUMER,
}
HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The export request of `spans`, grouped by resource, then by instrumentation scope, each in the order it
    first appears, as OpenTelemetry's exporter groups them."""
    request = ExportTraceServiceRequest()
    by_resource: dict[Resource, ResourceSpans] = {}
    by_scope: dict[tuple[Resource, InstrumentationScope | None], ScopeSpans] = {}
    current: tuple[Resource, InstrumentationScope | None] | None = None
    group: ScopeSpans | None = None
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        # Most spans have their predecessor's resource and scope, found without hashing either.
        if current is None or resource is not current[0] or scope is not current[1]:
            current = (resource, scope)
            group = by_scope.get(current)
            if group is None:
                group = by_scope[current] = _scope_spans(request, by_resource, resource, scope)
        _span(group.spans.add(), span)  # type: ignore[union-attr]
    return request


def _scope_spans(
    request: ExportTraceServiceRequest,
    by_resource: dict[Resource, ResourceSpans],
    resource: Resource,
    scope: InstrumentationScope | None,
) -> ScopeSpans:
    resource_spans = by_resource.get(resource)
    if resource_spans is None:
        resource_spans = by_resource[resource] = request.resource_spans.add(schema_url=resource.schema_url or "")
        resource_spans.resource.SetInParent()
        _attributes(resource_spans.resource.attributes, resource.attributes)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.SetInParent()
    if scope is not None:
        scope_spans.schema_url = scope.schema_url or ""
        scope_spans.scope.name = scope.name
        scope_spans.scope.version = scope.version or ""
        _attributes(scope_spans.scope.attributes, scope.attributes)
    return scope_spans


def _span(encoded: Span, span: ReadableSpan) -> None:
    context, parent = span.context, span.parent
    encoded.trace_id = context.trace_id.to_bytes(16, "big")
    encoded.span_id = context.span_id.to_bytes(8, "big")
    if context.trace_state:
        encoded.trace_state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
    if parent:
        encoded.parent_span_id = parent.span_id.to_bytes(8, "big")
    encoded.name = span.name
    encoded.kind = KINDS[span.kind]
    encoded.start_time_unix_nano = span.start_time or 0
    encoded.end_time_unix_nano = span.end_time or 0
    encoded.flags = _flags(parent)
    _attributes(encoded.attributes, span.attributes)
    for event in span.events:
        added = encoded.events.add(name=event.name, time_unix_nano=event.timestamp)
        added.dropped_attributes_count = event.dropped_attributes
        _attributes(added.attributes, event.attributes)
    for link in span.links:
        linked = link.context
        added = encoded.links.add(
            trace_id=linked.trace_id.to_bytes(16, "big"), span_id=linked.span_id.to_bytes(8, "big")
        )
        added.dropped_attributes_count = link.dropped_attributes
        added.flags = _flags(linked)
        _attributes(added.attributes, link.attributes)
    encoded.status.code = span.status.status_code.value
    encoded.status.message = span.status.description or ""
    encoded.dropped_attributes_count = span.dropped_attributes
    encoded.dropped_events_count = span.dropped_events
    encoded.dropped_links_count = span.dropped_links


def _flags(context: SpanContext | None) -> int:
    return HAS_IS_REMOTE | IS_REMOTE if context is not None and context.is_remote else HAS_IS_REMOTE


def _attributes(encoded: Any, attributes: Mapping[str, Any] | None) -> None:
    """Add `attributes` to `encoded` (a repeated KeyValue field); one that cannot be encoded is logged and left
    out, as OpenTelemetry's exporter does."""
    for key, value in (attributes or {}).items():
        pair = encoded.add(key=key)
        try:
            _value(pair.value, value)
        except TypeError as error:
            del encoded[-1]
            logger.exception("Failed to encode key %s: %s", key, error)


def _value(encoded: AnyValue, value: Any) -> None:
    if isinstance(value, str):
        encoded.string_value = value
    elif isinstance(value, bool):  # before int, whose subclass it is
        encoded.bool_value = value
    elif isinstance(value, int):
        encoded.int_value = value
    elif isinstance(value, float):
        encoded.double_value = value
    elif isinstance(value, bytes):
        encoded.bytes_value = value
    elif value is None:
        encoded.SetInParent()
    elif isinstance(value, Sequence):
        encoded.array_value.SetInParent()
        for item in value:
            _value(encoded.array_value.values.add(), item)
    elif isinstance(value, Mapping):
        encoded.kvlist_value.SetInParent()
        for key, item in value.items():
            _value(encoded.kvlist_value.values.add(key=str(key)).value, item)
    else:
        raise TypeError(f"Invalid type {type(value)} of value {value}")
