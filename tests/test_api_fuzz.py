"""Property-based fuzzing of POST /api/orders/: whatever arrives, never a 5xx, and never a partial order.

Bodies of any JSON shape, near-valid mutations of a valid body, raw bytes under several content
types, bodies that Schemathesis derives from the OpenAPI document, and Idempotency-Key headers
(repeated ones replay). Every non-2xx answer leaves no Order,
OrderLine, OutboxMessage or IdempotencyKey row behind; a 201 stores exactly one order with its
OrderPlaced outbox row.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from eventbus.models import OutboxMessage
from orders.models import CatalogProduct, IdempotencyKey, Order, OrderLine

pytestmark = pytest.mark.django_db
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = {
    "customer_email": "a@example.com",
    "payment_token": "tok_visa",
    "items": [{"product_id": "P001", "quantity": 2}, {"product_id": "P002", "quantity": 1}],
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "P001", "tok_visa", "a@example.com", "\x00", "1", "1.5", "-1", "null"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
# Objects with the API's own keys (each present or not) holding anything.
shaped_bodies = st.fixed_dictionaries(
    {},
    optional={
        "customer_email": json_values,
        "payment_token": json_values,
        "items": json_values
        | st.lists(
            st.fixed_dictionaries({}, optional={"product_id": json_values, "quantity": json_values}), max_size=4
        ),
    },
)

quantities = st.one_of(
    st.sampled_from([0, 1, 999, 1000, 1001, -1, 2**31, 2**63, 10**30, 1.0, 1.5, True, "2", "", None, [1], {"n": 1}]),
    st.integers(),
)
product_ids = st.one_of(
    st.sampled_from(["P001", "P002", "p001", "P001 ", " P001", "P001\n", "", "P" * 33, "P999", "../P001",
                     "P001'; --", "P\u0660\u0661", "\ufeffP001", None, 1, ["P001"]]),
    st.text(max_size=40),
)  # fmt: skip
tokens = st.one_of(
    st.sampled_from(["tok_visa", "tok_", "tok_" + "a" * 64, "tok_" + "a" * 65, "tok_visa\n", "tok_visa\x00",
                     "TOK_visa", "tok_visa ", "tok_-", "tok_decline", "tok_flaky", "", None, 7]),
    st.text(max_size=80),
)  # fmt: skip
emails = st.one_of(
    st.sampled_from(["a@example.com", "a@b", "a" * 250 + "@example.com", "not-an-email", "a@example.com\n",
                     "\u00e9@exampl\u00e9.com", "a@[127.0.0.1]", "", None, ["a@example.com"]]),
    st.emails(),
    st.text(max_size=60),
)  # fmt: skip
line = st.fixed_dictionaries({"product_id": product_ids, "quantity": quantities})


@st.composite
def near_valid_bodies(draw) -> object:
    """The valid body with one to three things changed: a field replaced, dropped, added, or the lines reshaped."""
    body = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        change = draw(st.sampled_from(["email", "token", "line", "add-line", "drop", "extra", "many-lines", "items"]))
        if change == "email":
            body["customer_email"] = draw(emails)
        elif change == "token":
            body["payment_token"] = draw(tokens)
        elif change == "line" and isinstance(body.get("items"), list) and body["items"]:
            body["items"][draw(st.integers(0, len(body["items"]) - 1))] = draw(line)
        elif change == "add-line" and isinstance(body.get("items"), list):
            body["items"].append(draw(line | st.just({"product_id": "P001", "quantity": 1000})))
        elif change == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif change == "extra":
            body[draw(st.text(max_size=12))] = draw(json_values)
        elif change == "many-lines":
            body["items"] = [{"product_id": "P001", "quantity": 1}] * draw(st.sampled_from([99, 100, 101, 500]))
        elif change == "items":
            body["items"] = draw(json_values)
    return body


# A handful of keys so that repeats (replays, and a key reused with another body) happen often.
keys = st.none() | st.sampled_from(["k-1", "k-2", "", " ", "k" * 255, "k" * 256]) | st.text(max_size=20)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
     "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "text/plain", "application/xml"]
)  # fmt: skip


@pytest.fixture
def api() -> APIClient:
    for sku, price in (("P001", "75.00"), ("P002", "5.00")):
        CatalogProduct.objects.create(sku=sku, name=f"Product {sku}", price=price, currency="USD", revision=1)
    return APIClient()


def counts() -> dict[str, int]:
    return {
        "orders": Order.objects.count(),
        "lines": OrderLine.objects.count(),
        "outbox": OutboxMessage.objects.count(),
        "keys": IdempotencyKey.objects.count(),
    }


def post_and_check(api: APIClient, raw: bytes | str, content_type: str, key: str | None) -> int:
    """POST, then check the response against what it left in the database; return the status."""
    headers = {} if key is None else {"Idempotency-Key": key}
    before = counts()
    response = api.post("/api/orders/", raw, content_type=content_type, headers=headers)
    after = counts()
    added = {name: after[name] - before[name] for name in after}
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 300 or response.headers.get("Idempotent-Replayed") == "true":
        assert added == dict.fromkeys(added, 0), (response.status_code, response.content[:300], added)
        return response.status_code
    assert response.status_code == 201, response.content[:300]
    order = Order.objects.get(pk=response.json()["id"])
    assert added["orders"] == 1 and added["outbox"] == 1
    assert added["lines"] == order.lines.count() >= 1
    assert added["keys"] == (1 if key and key.strip() else 0)
    assert OutboxMessage.objects.filter(correlation_id=str(order.id), event_type="orders.OrderPlaced.v1").count() == 1
    return response.status_code


def test_json_bodies_of_any_shape_get_a_4xx_or_a_201_and_never_leave_a_partial_order(api):
    @FUZZ
    @given(body=json_values | shaped_bodies, key=keys)
    def fuzz(body, key):
        post_and_check(api, json.dumps(body), "application/json", key)

    fuzz()


def test_near_valid_bodies_get_a_4xx_or_a_201_and_never_leave_a_partial_order(api):
    statuses = set()

    @FUZZ
    @given(body=near_valid_bodies(), key=keys)
    def fuzz(body, key):
        statuses.add(post_and_check(api, json.dumps(body), "application/json", key))

    fuzz()
    assert 201 in statuses and 400 in statuses, statuses  # the mutations reach both sides of the line


def test_raw_bytes_under_any_content_type_get_a_4xx_or_a_201_and_never_leave_a_partial_order(api):
    @settings(FUZZ, max_examples=100)
    @given(
        raw=st.binary(max_size=200) | st.builds(lambda body: json.dumps(body).encode(), shaped_bodies),
        content_type=content_types,
        key=keys,
    )
    def fuzz(raw, content_type, key):
        post_and_check(api, raw, content_type, key)

    fuzz()


def test_cases_generated_from_the_openapi_document_never_get_a_5xx_or_leave_a_partial_order(api):
    """Schemathesis reads the served OpenAPI document and generates schema-valid and schema-violating
    bodies (and Idempotency-Key headers) for POST /api/orders/; it runs in-process through the test client."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.core import NOT_SET
    from schemathesis.generation import GenerationMode

    document = api.get("/api/schema/", {"format": "json"}).json()
    operation = schemathesis.openapi.from_dict(document)["/api/orders/"]["POST"]
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode)).filter(
        lambda case: case.media_type == "application/json"
    )

    @settings(FUZZ, max_examples=100, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def fuzz(case):
        body = b"" if case.body is NOT_SET else case.body
        raw = body if isinstance(body, bytes | str) else json.dumps(body)
        post_and_check(api, raw, "application/json", (case.headers or {}).get("Idempotency-Key"))

    fuzz()


@pytest.mark.parametrize("raw", ["[" * 100_000, '{"items": ' * 50_000], ids=["deep-array", "deep-object"])
def test_deeply_nested_json_is_a_400_not_a_500(api, raw):
    assert post_and_check(api, raw, "application/json", None) == 400
