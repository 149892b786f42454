"""Trace context along the event path, and spans of the hops that no instrumentation covers.

Every event carries the W3C trace context of what caused it in the CloudEvents Distributed Tracing
extension attributes `traceparent` and `tracestate`, taken when publish() writes it to the outbox: the
current span's when tracing is on (eventbus.telemetry), otherwise that of the event being handled or of
the API request's `traceparent` header, so that a trace goes on through a process that does not trace.
With tracing on, the outbox write, the relay's publish, the intake's dispatch and each handler get a
span (Django, Celery, psycopg and Redis have their own instrumentation); with it off, each function
here returns at once. In a trace not sampled, under a sampler that drops what its parent dropped (the
parentbased_* ones), they make no span: the trace context is passed on, marked not sampled, without one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

    from eventbus.envelope import CloudEvent
    from eventbus.models import OutboxMessage

logger = logging.getLogger(__name__)

# W3C Trace Context: version (never ff), trace id, parent span id, flags; ids are never all zeros. Version 00
# has exactly these four fields, a later version may append more.
TRACEPARENT = re.compile(r"(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
TRACESTATE_MEMBERS = 32
TRACESTATE_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)

_tracer: trace.Tracer | None = None  # set by eventbus.telemetry when tracing is on
# Whether the sampler drops every span whose parent was not sampled (the parentbased_* samplers): then a span
# in a trace not sampled would be dropped anyway, and the event path makes none, only passes the trace on.
_follows_parent = False
_propagator = TraceContextTextMapPropagator()
_no_span = nullcontext()
# The trace context of the API request being served, from its `traceparent` header (RequestTraceContext).
_request_context: ContextVar[dict[str, str] | None] = ContextVar("request_trace_context", default=None)


def start(tracer: trace.Tracer | None, *, follows_parent: bool = False) -> None:
    """Give the event path's spans to `tracer` from now on (None: no spans). `follows_parent`: its sampler drops
    every span whose parent was not sampled, so in such a trace no span need be made (each would cost about half
    of a recorded one only to be dropped): the trace context is passed on without one."""
    global _tracer, _follows_parent
    _tracer = tracer
    _follows_parent = tracer is not None and follows_parent


# --- the trace context an event carries


def trace_id(traceparent: object) -> str:
    """The trace id of a W3C `traceparent`; "" when it is missing or malformed."""
    return fields[2] if (fields := _fields(traceparent)) else ""


def _fields(traceparent: object) -> re.Match[str] | None:
    """A W3C `traceparent`'s fields (version, trace id, parent id, flags); None when it is missing or malformed."""
    match = TRACEPARENT.fullmatch(traceparent) if isinstance(traceparent, str) else None
    return match if match and not (match[1] == "00" and match[5]) else None


def valid_tracestate(tracestate: object) -> bool:
    """Whether `tracestate` is a W3C `tracestate`: up to 32 `key=value` members, comma-separated."""
    if not isinstance(tracestate, str):
        return False
    members = [member.strip(" \t") for member in tracestate.split(",")]
    members = [member for member in members if member]  # empty members are allowed, and mean nothing
    return len(members) <= TRACESTATE_MEMBERS and all(TRACESTATE_MEMBER.fullmatch(member) for member in members)


def checked(traceparent: object, tracestate: object, *, what: str) -> dict[str, str]:
    """`traceparent` and `tracestate` as an event or a request may carry them, less what is malformed: a bad
    trace context is dropped (logged at debug level), never a reason to refuse `what` carries it."""
    if traceparent in (None, ""):
        return {}
    if not trace_id(traceparent):
        logger.debug("dropping the malformed traceparent %r of %s", traceparent, what)
        return {}
    if tracestate in (None, "") or valid_tracestate(tracestate):
        return {"traceparent": traceparent, "tracestate": tracestate or ""}
    logger.debug("dropping the malformed tracestate %r of %s", tracestate, what)
    return {"traceparent": traceparent, "tracestate": ""}


def carried(cause: CloudEvent | None) -> dict[str, str]:
    """The trace context of an event about to be written (new_event's keyword arguments): the current span's
    when tracing, else that of `cause`, the event being handled, else that of the API request being served."""
    if carrier := injected():  # nothing when not tracing, or no span is current
        return carrier
    if cause is not None:
        return {"traceparent": cause.traceparent, "tracestate": cause.tracestate}
    return _request_context.get() or {}


class RequestTraceContext:
    """Django middleware: the `traceparent` (and `tracestate`) header of a request becomes the trace context
    of the events it publishes, even with tracing off (when on, the Django instrumentation continues it)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        traceparent = request.META.get("HTTP_TRACEPARENT")
        if traceparent is None:
            return self.get_response(request)
        incoming = checked(traceparent.strip(), request.META.get("HTTP_TRACESTATE", "").strip(), what="a request")
        token = _request_context.set(incoming or None)
        try:
            return self.get_response(request)
        finally:
            _request_context.reset(token)


# --- spans


def outbox_span(event_type: str, exchange: str) -> AbstractContextManager[Any]:
    """The span of publish() writing an event to the outbox, current while the event takes its trace context."""
    if _tracer is None or _not_sampled(trace.get_current_span().get_span_context()):
        return _no_span  # the event takes the current span's trace context, not sampled, as its own
    attributes = {"messaging.system": "rabbitmq", "messaging.operation.type": "create",
                  "messaging.destination.name": exchange, "cloudevents.event_type": event_type}  # fmt: skip
    return _tracer.start_as_current_span(f"create {event_type}", kind=SpanKind.PRODUCER, attributes=attributes)


def describe(event: CloudEvent) -> None:
    """Name `event` on the current span (its id, type, source, saga)."""
    if _tracer is not None and (span := trace.get_current_span()).is_recording():
        span.set_attributes(_event_attributes(event.id, event.type, event.correlationid))


def published(rows: Iterable[OutboxMessage], *, started: int, refused: dict[str, str]) -> None:
    """Spans of the relay publishing `rows` (from `started`, time.time_ns(), until now, when the broker has
    confirmed the batch), one per event, each a child of its event's trace context; `refused`: event id -> why."""
    if _tracer is None:
        return
    ended = time.time_ns()
    for row in rows:
        body = row.body
        if _follows_parent and not _sampled_flag(body.get("traceparent")):
            continue  # read from the flags alone: the relay sees each event once, so nothing read is read again
        parent = _parent(body.get("traceparent"), body.get("tracestate"))
        event_id = str(row.event_id)
        attributes = {
            **_event_attributes(event_id, row.event_type, str(body.get("correlationid", ""))),
            "messaging.operation.type": "send",
            "messaging.destination.name": row.exchange,
            "messaging.rabbitmq.destination.routing_key": row.routing_key,
        }
        span = _tracer.start_span(
            f"publish {row.event_type}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            start_time=started,
        )
        if (reason := refused.get(event_id)) is not None:
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end(end_time=ended)


def dispatch_span(events: list[CloudEvent], queue: str) -> AbstractContextManager[Any]:
    """The span of the intake handing `events` from `queue` to Celery, current while it makes their requests
    (whose headers carry it: the Celery instrumentation makes the task its child). A lone event's is a child of
    the event's trace context; a batch's starts a trace of its own, linked to each event's."""
    if _tracer is None:
        return _no_span
    own = _span_context(events[0]) if len(events) == 1 else None
    if own is not None and _not_sampled(own):
        return trace.use_span(trace.NonRecordingSpan(own))  # the task it makes continues the event's trace
    attributes: dict[str, Any] = {"messaging.system": "rabbitmq", "messaging.operation.type": "receive",
                                  "messaging.destination.name": queue}  # fmt: skip
    if own is not None:
        event = events[0]
        return _tracer.start_as_current_span(
            f"receive {event.type}",
            context=trace.set_span_in_context(trace.NonRecordingSpan(own)),  # the event's trace context, read once
            kind=SpanKind.CONSUMER,
            attributes={**attributes, **_event_attributes(event.id, event.type, event.correlationid)},
        )
    span = _tracer.start_as_current_span(
        f"receive {queue}",
        context=Context(),  # a root: the batch belongs to no one event's trace
        kind=SpanKind.CONSUMER,
        attributes={**attributes, "messaging.batch.message_count": len(events)},
    )
    return _linked_to(span, events)


@contextmanager
def _linked_to(span_manager: AbstractContextManager[trace.Span], events: list[CloudEvent]) -> Iterator[trace.Span]:
    """Enter `span_manager` and, should its span be recorded, link it to each event's trace context: read only
    then, since a batch's root span is dropped as often as the sampler drops a trace (9 in 10, say)."""
    with span_manager as span:
        if span.is_recording():
            for event in events:
                if (context := _span_context(event)).is_valid:
                    span.add_link(context)
        yield span


def injected() -> dict[str, str]:
    """The current span's trace context as message headers (`traceparent`, `tracestate`); none when not tracing."""
    carrier: dict[str, str] = {}
    if _tracer is not None:
        _propagator.inject(carrier)
    return carrier


def handler_span(handler: str, event: CloudEvent) -> AbstractContextManager[Any]:
    """The span of `handler` applied to `event`: a child of the current span (the handler's Celery task) when
    that continues the event's trace, else (a batch's task) of the event's own trace context, linked to it.
    Inside a span that is not recorded (its trace not sampled), the calls the handler makes get none either."""
    if _tracer is None:
        return _no_span
    own = _span_context(event)
    if _not_sampled(own):  # what it publishes continues the event's trace, not sampled; its calls make no spans
        return _calls_untraced_in(trace.use_span(trace.NonRecordingSpan(own)))
    attributes = {"eventbus.handler": handler, **_event_attributes(event.id, event.type, event.correlationid)}
    current = trace.get_current_span().get_span_context()
    if not own.is_valid or own.trace_id == current.trace_id:
        span = _tracer.start_as_current_span(f"process {event.type}", kind=SpanKind.CONSUMER, attributes=attributes)
    else:
        span = _tracer.start_as_current_span(
            f"process {event.type}",
            context=trace.set_span_in_context(trace.NonRecordingSpan(own)),
            kind=SpanKind.CONSUMER,
            links=[Link(current)] if current.is_valid else None,
            attributes=attributes,
        )
    return _calls_traced_if_recorded(span)


@contextmanager
def _calls_untraced_in(span_manager: AbstractContextManager[trace.Span]) -> Iterator[trace.Span]:
    with span_manager as span, _suppressed():
        yield span


@contextmanager
def _calls_traced_if_recorded(span_manager: AbstractContextManager[trace.Span]) -> Iterator[trace.Span]:
    """Enter `span_manager`; should its span not be recorded, the instrumented calls inside (psycopg's, Redis's)
    make no spans. Under a parent-based sampler theirs would not be recorded either, but each would still cost
    about half of what a recorded one does (measured: 28 and 67 us per statement). The trace context the events
    carry is the span's still, unsampled, so their handlers' spans are not recorded either."""
    with span_manager as span:
        if span.is_recording():
            yield span
        else:
            with _suppressed():
                yield span


def calls_untraced() -> AbstractContextManager[Any]:
    """The instrumented calls inside (psycopg's, Redis's) make no spans: the relay's polling, whose calls belong to
    no request, task or event (telemetry_sdk.WithoutOrphanCalls would drop each span, at a cost)."""
    return _suppressed() if _tracer is not None else _no_span


def _suppressed() -> AbstractContextManager[None]:
    # Imported only with tracing on: with it off, no instrumentation package is loaded at all.
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def _parent(traceparent: object, tracestate: object) -> Context:
    """The context whose span is the one a trace context names; an empty one (a root) when there is none."""
    remote = _remote(traceparent, tracestate)
    return trace.set_span_in_context(trace.NonRecordingSpan(remote), Context()) if remote.is_valid else Context()


def _remote(traceparent: object, tracestate: object) -> trace.SpanContext:
    """The span a trace context names, as OpenTelemetry's W3C propagator would read it from message headers (the
    tests hold them to the same answers), without building the carrier and the context the propagator needs:
    the relay reads one for every event it publishes, each handler one for every event it handles."""
    if (fields := _fields(traceparent)) is None:
        return trace.INVALID_SPAN_CONTEXT
    return trace.SpanContext(
        trace_id=int(fields[2], 16),
        span_id=int(fields[3], 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(fields[4], 16)),
        trace_state=trace.TraceState.from_header([tracestate]) if isinstance(tracestate, str) and tracestate else None,
    )


def _sampled_flag(traceparent: object) -> bool:
    """Whether a `traceparent` leaves its trace sampled: true unless it is well formed and its flags say not;
    none, or a malformed one, starts a trace."""
    return bool(int(fields[4], 16) & 1) if (fields := _fields(traceparent)) else True


def _not_sampled(context: trace.SpanContext) -> bool:
    """Whether a span under `context` would be dropped: its trace is not sampled and the sampler follows that."""
    return _follows_parent and context.is_valid and not context.trace_flags.sampled


def _span_context(event: CloudEvent) -> trace.SpanContext:
    return _remote(event.traceparent, event.tracestate)


def _event_attributes(event_id: str, event_type: str, correlation_id: str) -> dict[str, str]:
    # OpenTelemetry's semantic conventions for messaging and for CloudEvents.
    return {
        "messaging.system": "rabbitmq",
        "messaging.message.id": event_id,
        "messaging.message.conversation_id": correlation_id,
        "cloudevents.event_id": event_id,
        "cloudevents.event_type": event_type,
    }
