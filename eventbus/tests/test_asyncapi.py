"""The event catalog: the committed AsyncAPI document is valid and current, and no published version breaks."""

import copy
import json
from pathlib import Path
from uuid import UUID

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from eventbus.asyncapi import (
    breaking_changes,
    build_document,
    catalog_breaking_changes,
    document_path,
    render,
)
from eventbus.contracts import EventData, all_contracts, contract
from eventbus.subscriptions import subscribers
from tests import factories

SERVICES = {"orders", "inventory", "payments"}
# The official JSON Schema of AsyncAPI 2.6.0, from the npm package @asyncapi/specs 6.11.1 (Apache-2.0).
ASYNCAPI_SCHEMA = Path(__file__).with_name("asyncapi-2.6.0.schema.json")


@contract(producer="example", name="Audited", version=1, routing_key="example.audited")
class Audited(EventData):
    """Registered by this test module only: the catalog must leave it out."""

    note: str


class Line(EventData):
    product_id: str
    quantity: int


class Shipped(EventData):
    order_id: UUID
    lines: list[Line]
    carrier: str | None = None


def test_no_published_event_version_changes_incompatibly():
    committed = yaml.safe_load(document_path().read_text())
    problems = "\n".join(catalog_breaking_changes(committed, build_document()))
    assert not problems, f"published event versions changed incompatibly (publish a new version instead):\n{problems}"


def test_the_committed_document_is_what_the_code_generates():
    assert document_path().read_text() == render(build_document()), "run `manage.py asyncapi` and commit the file"


def shipped_with(edit) -> dict:
    schema = copy.deepcopy(Shipped.model_json_schema(by_alias=True))
    edit(schema)
    return schema


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(lambda s: s["properties"].pop("carrier"), ["data.carrier: removed"], id="remove-field"),
        pytest.param(
            lambda s: s["$defs"]["Line"]["properties"].pop("quantity"),
            ["data.lines[].quantity: removed"],
            id="remove-nested-field",
        ),
        pytest.param(
            lambda s: s["properties"]["orderId"].update(type="integer", format="int64"),
            ["data.orderId: type changed from string(uuid) to integer(int64)"],
            id="retype",
        ),
        pytest.param(
            lambda s: s["$defs"]["Line"]["properties"]["quantity"].update(type="string"),
            ["data.lines[].quantity: type changed from integer to string"],
            id="retype-through-ref",
        ),
        pytest.param(
            lambda s: s["properties"].update(carrier={"type": "string"}),
            ["data.carrier: type changed from null|string to string"],
            id="optional-to-non-null",
        ),
        pytest.param(lambda s: s["required"].append("carrier"), ["data.carrier: now required"], id="make-required"),
        pytest.param(
            lambda s: s["properties"].update(giftWrap={"type": "boolean"}), [], id="add-optional-field-is-compatible"
        ),
    ],
)
def test_breaking_changes(edit, expected):
    assert breaking_changes(shipped_with(lambda s: None), shipped_with(edit)) == expected


def test_a_new_pydantic_version_with_an_added_optional_field_is_compatible():
    class ShippedWithTracking(Shipped):
        tracking_url: str | None = None

    old, new = Shipped.model_json_schema(by_alias=True), ShippedWithTracking.model_json_schema(by_alias=True)
    assert breaking_changes(old, new) == []
    assert breaking_changes(new, old) == ["data.trackingUrl: removed"]


def test_an_event_version_dropped_from_the_code_is_breaking():
    current = build_document()
    del current["components"]["messages"]["orders.OrderPlaced.v1"]
    assert catalog_breaking_changes(build_document(), current) == [
        "orders.OrderPlaced.v1: published, but no longer in the code"
    ]


def test_the_catalog_lists_every_event_the_services_publish_and_no_test_event():
    document = build_document()
    published = {c.type: c for c in all_contracts() if c.producer in SERVICES}
    assert sorted(document["components"]["messages"]) == sorted(published)
    assert Audited.contract.type not in document["components"]["messages"]
    for event_type, event in published.items():
        channel = document["channels"][f"{event.producer}.events/{event.routing_key}"]
        exchange = channel["bindings"]["amqp"]["exchange"]
        assert (exchange["name"], exchange["type"], exchange["durable"]) == (f"{event.producer}.events", "topic", True)
        assert channel["subscribe"]["message"] == {"$ref": f"#/components/messages/{event_type}"}
        schema = document["components"]["schemas"][event_type]
        assert breaking_changes(event.json_schema(), schema) == [] and "$defs" not in json.dumps(schema)


def test_each_subscribed_queue_is_listed_as_a_consumer_of_its_events():
    channels = build_document()["channels"]
    for subscriber in subscribers():
        for handler in subscriber.handlers:
            channel = channels[f"{handler.contract.producer}.events/{handler.contract.routing_key}"]
            consumer = next(c for c in channel["publish"]["x-consumers"] if c["service"] == subscriber.service)
            assert consumer["queue"] == subscriber.queue
            assert {"name": handler.name, "reads": handler.contract.type} in consumer["handlers"]


def test_the_document_is_valid_asyncapi_2_6():
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(yaml.safe_load(render(build_document())))]
    assert errors == []


def test_an_event_on_the_wire_matches_its_message_in_the_catalog():
    document = build_document()
    registry = Registry().with_resource("urn:catalog", Resource(contents=document, specification=DRAFT7))
    payload = jsonschema.Draft7Validator(
        {"$ref": "urn:catalog#/components/messages/orders.OrderPlaced.v1/payload"}, registry=registry
    )
    wire = factories.order_placed_event(correlation_id="saga-1")
    payload.validate(wire)
    with pytest.raises(jsonschema.ValidationError):
        payload.validate({**wire, "data": {**wire["data"], "items": [{"productId": "P001", "quantity": "two"}]}})
