"""Event contracts: versioned, typed payloads registered by type name, exportable as JSON Schema.

A producer declares its events in its own `events.py`:

    @contract(producer="orders", name="OrderPlaced", version=1, routing_key="order.placed")
    class OrderPlaced(EventData): ...

The CloudEvents `type` is `<producer>.<name>.v<version>` (e.g. `orders.OrderPlaced.v1`).
Consumers depend on these classes only, never on the producer's models or services.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

Money = Annotated[str, StringConstraints(pattern=r"^\d{1,12}\.\d{2}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class EventData(BaseModel):
    """Base of every event's `data`: immutable, camelCase on the wire, and unknown fields are kept
    so that newer producers can add fields without breaking older consumers."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True, alias_generator=to_camel)
    contract: ClassVar[Contract]


@dataclass(frozen=True)
class Contract:
    producer: str
    name: str
    version: int
    routing_key: str
    model: type[EventData]

    @property
    def type(self) -> str:
        return f"{self.producer}.{self.name}.v{self.version}"

    @property
    def family(self) -> str:
        """The type without its version: every version of one event shares it."""
        return f"{self.producer}.{self.name}"

    @property
    def source(self) -> str:
        return f"/{self.producer}"

    def json_schema(self) -> dict[str, Any]:
        schema = self.model.model_json_schema(by_alias=True)
        schema["$id"] = f"urn:orderpipe:event:{self.type}"
        schema["title"] = self.type
        return schema


class UnknownEventType(LookupError):
    pass


_contracts: dict[str, Contract] = {}
_upcasters: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


def contract(
    *, producer: str, name: str, version: int, routing_key: str
) -> Callable[[type[EventData]], type[EventData]]:
    """Register an event payload class under its versioned type name."""

    def register(model: type[EventData]) -> type[EventData]:
        declared = Contract(producer=producer, name=name, version=version, routing_key=routing_key, model=model)
        existing = _contracts.get(declared.type)
        if existing is not None and existing.model.__qualname__ != model.__qualname__:
            raise ValueError(f"event type {declared.type} is already registered by {existing.model!r}")
        _contracts[declared.type] = declared
        model.contract = declared
        return model

    return register


def upcaster(from_type: str, to_type: str) -> Callable[[Callable[[dict], dict]], Callable[[dict], dict]]:
    """Register a function that turns the `data` of `from_type` into the `data` of `to_type`."""

    def register(function: Callable[[dict], dict]) -> Callable[[dict], dict]:
        _upcasters[from_type] = (to_type, function)
        return function

    return register


def lookup(event_type: str) -> Contract:
    try:
        return _contracts[event_type]
    except KeyError:
        raise UnknownEventType(f"unknown event type {event_type!r}") from None


def all_contracts() -> list[Contract]:
    return sorted(_contracts.values(), key=lambda c: (c.producer, c.name, c.version))


def upcast(event_type: str, data: dict[str, Any], target: Contract) -> dict[str, Any]:
    """Bring `data` of `event_type` up to the `target` contract through the registered upcasters."""
    seen = {event_type}
    while event_type != target.type:
        step = _upcasters.get(event_type)
        if step is None:
            raise UnknownEventType(f"no upcaster from {event_type!r} towards {target.type!r}")
        event_type, function = step[0], step[1]
        if event_type in seen:
            raise ValueError(f"upcaster cycle at {event_type!r}")
        seen.add(event_type)
        data = function(data)
    return data
