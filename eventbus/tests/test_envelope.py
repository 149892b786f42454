"""Envelope and contracts: what is accepted on the wire, what is poison, and upcasting."""

import json
import pickle

import jsonschema
import pytest
from pydantic import Field

from eventbus.contracts import EventData, contract, lookup, upcaster
from eventbus.envelope import CONTENT_TYPE, PoisonMessage, new_event, parse
from orders.events import OrderPlaced
from tests import factories


def test_a_new_event_is_a_cloudevent_whose_data_keeps_the_articles_field_names():
    event = new_event(factories.order_placed(), correlation_id="saga-1")
    wire = json.loads(event.to_json())
    assert wire["specversion"] == "1.0" and wire["type"] == "orders.OrderPlaced.v1" and wire["source"] == "/orders"
    assert wire["correlationid"] == "saga-1" and wire["causationid"] == wire["id"]
    assert {"orderId", "items", "totalAmount", "currency", "timestamp"} <= wire["data"].keys()
    assert wire["data"]["items"] == [{"productId": "P001", "quantity": 2}]
    jsonschema.validate(wire["data"], OrderPlaced.contract.json_schema())
    assert parse(event.to_json(), CONTENT_TYPE).id == event.id


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{oops", CONTENT_TYPE, "not valid JSON"),
        (b"\xff\xfe", CONTENT_TYPE, "not valid JSON"),
        (b"[1, 2]", CONTENT_TYPE, "must be a JSON object"),
        (b'{"specversion": "1.0"}', CONTENT_TYPE, "missing CloudEvents attribute(s): id, source, type"),
        (pickle.dumps({"a": 1}), "application/x-python-serialize", "is not accepted"),
        (b"{}", None, "is not accepted"),
    ],
)
def test_poison_is_named_for_what_it_is(body, content_type, reason):
    with pytest.raises(PoisonMessage, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse(body, content_type)


def test_unknown_types_wrong_data_and_bad_hops_are_poison():
    wire = json.loads(new_event(factories.order_placed()).to_json())
    with pytest.raises(PoisonMessage, match="unknown event type"):
        parse(json.dumps({**wire, "type": "orders.OrderTeleported.v1"}), CONTENT_TYPE)
    with pytest.raises(PoisonMessage, match="items"):
        parse(json.dumps({**wire, "data": {**wire["data"], "items": []}}), CONTENT_TYPE)
    with pytest.raises(PoisonMessage, match="hops"):
        parse(json.dumps({**wire, "hops": -1}), CONTENT_TYPE)


def test_an_added_field_from_a_newer_producer_does_not_break_an_older_consumer():
    wire = json.loads(new_event(factories.order_placed()).to_json())
    wire["data"]["giftWrap"] = True
    assert parse(json.dumps(wire), CONTENT_TYPE).payload().order_id


@contract(producer="example", name="Greeted", version=1, routing_key="example.greeted")
class GreetedV1(EventData):
    name: str


@contract(producer="example", name="Greeted", version=2, routing_key="example.greeted")
class GreetedV2(EventData):
    first_name: str
    last_name: str = Field(default="")


@upcaster("example.Greeted.v1", "example.Greeted.v2")
def greeted_v1_to_v2(data: dict) -> dict:
    first, _, last = data["name"].partition(" ")
    return {"firstName": first, "lastName": last}


def test_a_v2_consumer_reads_a_v1_event_through_its_upcaster():
    event = new_event(GreetedV1(name="Ada Lovelace"))
    data = event.payload(lookup("example.Greeted.v2"))
    assert data == GreetedV2(first_name="Ada", last_name="Lovelace")
