"""CloudEvents 1.0 envelope in structured JSON mode, with correlation, causation, hop count and trace context."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from eventbus.contracts import Contract, EventData, lookup, upcast
from eventbus.tracing import checked

CONTENT_TYPE = "application/cloudevents+json"
ACCEPTED_CONTENT_TYPES = frozenset({CONTENT_TYPE, "application/json"})
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")


class PoisonMessage(ValueError):
    """A message that can never be handled as it is: not JSON, not a CloudEvent, unknown type, bad data."""


@dataclass(frozen=True)
class CloudEvent:
    """One event on the wire. `data` is the plain JSON object; `payload()` validates it into its contract."""

    type: str
    source: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    correlationid: str = ""
    causationid: str = ""
    hops: int = 0
    subject: str = ""
    # The CloudEvents Distributed Tracing extension: the W3C trace context of what caused the event.
    traceparent: str = ""
    tracestate: str = ""

    @property
    def contract(self) -> Contract:
        return lookup(self.type)

    def to_dict(self) -> dict[str, Any]:
        event = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "datacontenttype": "application/json",
            "correlationid": self.correlationid or self.id,
            "causationid": self.causationid or self.id,
            "hops": self.hops,
            "data": self.data,
        }
        if self.subject:
            event["subject"] = self.subject
        if self.traceparent:
            event["traceparent"] = self.traceparent
            if self.tracestate:
                event["tracestate"] = self.tracestate
        return event

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def payload(self, contract: Contract | None = None) -> EventData:
        """The data as the given contract (default: the event's own type), upcast when needed."""
        own = self.contract
        target = contract or own
        data = self.data if target.type == own.type else upcast(own.type, self.data, target)
        return target.model.model_validate(data)


def new_event(
    data: EventData,
    *,
    correlation_id: str = "",
    causation_id: str = "",
    hops: int = 0,
    traceparent: str = "",
    tracestate: str = "",
) -> CloudEvent:
    """Wrap validated data in a fresh envelope; data goes through its JSON form so the wire is what we check."""
    contract = type(data).contract
    as_json = json.loads(data.model_dump_json(by_alias=True))
    event = CloudEvent(
        type=contract.type,
        source=contract.source,
        data=as_json,
        correlationid=correlation_id,
        causationid=causation_id,
        hops=hops,
        traceparent=traceparent,
        tracestate=tracestate,
    )
    event.payload()  # a producer bug fails here, inside its own transaction, not in every consumer
    return event


def parse(body: bytes | str, content_type: str | None) -> CloudEvent:
    """Parse and validate a message body; raise PoisonMessage with the reason when it can never be handled."""
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise PoisonMessage(f"content type {content_type!r} is not accepted (JSON only)")
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PoisonMessage(f"body is not valid JSON: {error}") from None
    return from_dict(raw)


def from_dict(raw: Any) -> CloudEvent:
    if not isinstance(raw, dict):
        raise PoisonMessage("a CloudEvent must be a JSON object")
    missing = [name for name in REQUIRED_ATTRIBUTES if not isinstance(raw.get(name), str) or not raw.get(name)]
    if missing:
        raise PoisonMessage(f"missing CloudEvents attribute(s): {', '.join(missing)}")
    if raw["specversion"] != "1.0":
        raise PoisonMessage(f"unsupported specversion {raw['specversion']!r}")
    if not isinstance(raw.get("data"), dict):
        raise PoisonMessage("`data` must be a JSON object")
    hops = raw.get("hops", 0)
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 0:
        raise PoisonMessage(f"`hops` must be a non-negative integer, got {hops!r}")
    event = CloudEvent(
        type=raw["type"],
        source=raw["source"],
        data=raw["data"],
        id=raw["id"],
        time=str(raw.get("time", "")),
        correlationid=str(raw.get("correlationid", "")),
        causationid=str(raw.get("causationid", "")),
        hops=hops,
        subject=str(raw.get("subject", "")),
        **checked(raw.get("traceparent"), raw.get("tracestate"), what=f"event {raw['id']}"),
    )
    try:
        event.payload()
    except LookupError as error:
        raise PoisonMessage(str(error)) from None
    except ValidationError as error:
        raise PoisonMessage(f"data does not match {event.type}: {_first_errors(error)}") from None
    return event


def _first_errors(error: ValidationError, limit: int = 3) -> str:
    parts = [f"{'.'.join(str(p) for p in item['loc']) or '(root)'}: {item['msg']}" for item in error.errors()[:limit]]
    return "; ".join(parts)
