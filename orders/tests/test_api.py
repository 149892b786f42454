"""The orders API: 201 with the order, 4xx naming the field with nothing stored, idempotent POSTs."""

import json
import uuid

import pytest
from rest_framework.test import APIClient

from eventbus.models import OutboxMessage
from orders.models import IdempotencyKey, Order, OrderLine
from tests import factories

pytestmark = pytest.mark.django_db
VALID = {
    "customer_email": "a@example.com",
    "payment_token": "tok_visa",
    "items": [{"product_id": "P001", "quantity": 2}],
}


@pytest.fixture
def api():
    factories.product("P001", price="75.00", stock=10)
    return APIClient()


def post(api, body, **headers):
    raw = body if isinstance(body, str) else json.dumps(body)
    return api.post("/api/orders/", raw, content_type="application/json", headers=headers)


def nothing_stored() -> bool:
    return not (Order.objects.exists() or OrderLine.objects.exists() or OutboxMessage.objects.exists())


def test_placing_an_order_answers_201_with_the_order_and_its_timeline(api):
    response = post(api, VALID)
    assert response.status_code == 201, response.content
    order = response.json()
    assert order["status"] == "pending" and order["cancel_reason"] == ""
    assert order["total_amount"] == "150.00" and order["currency"] == "USD"
    assert order["items"] == [{"product_id": "P001", "quantity": 2, "unit_price": "75.00"}]
    assert [event["type"] for event in order["events"]] == ["orders.OrderPlaced.v1"]
    handlers = {run["handler"]: run["state"] for run in order["events"][0]["handlers"]}
    assert handlers == {"inventory.reserve_stock": "PENDING", "payments.authorize_payment": "PENDING"}
    uuid.UUID(order["id"])

    detail = api.get(f"/api/orders/{order['id']}/")
    assert detail.status_code == 200 and detail.json()["id"] == order["id"]


def test_an_unknown_order_is_404(api):
    assert api.get(f"/api/orders/{uuid.uuid4()}/").status_code == 404
    assert api.get("/api/orders/12/").status_code == 404


def test_a_repeated_idempotency_key_returns_the_first_response_and_places_one_order(api):
    first = post(api, VALID, **{"Idempotency-Key": "k-1"})
    second = post(api, VALID, **{"Idempotency-Key": "k-1"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json() and second.headers["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1 and OutboxMessage.objects.count() == 1

    other = post(api, {**VALID, "customer_email": "b@example.com"}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()
    assert Order.objects.count() == 1 and IdempotencyKey.objects.count() == 1


@pytest.mark.parametrize("key", ["k\x00-1", "k\n1", "x" * 256])
def test_an_idempotency_key_that_is_too_long_or_not_printable_is_a_400_and_stores_nothing(api, key):
    response = post(api, VALID, **{"Idempotency-Key": key})
    assert response.status_code == 400 and "Idempotency-Key" in response.json()
    assert Order.objects.count() == 0 and IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**VALID, "items": [{"product_id": "P999", "quantity": 1}]}, "items"),
        ({**VALID, "items": [{"product_id": "P001", "quantity": 0}]}, "items"),
        ({**VALID, "items": [{"product_id": "P001", "quantity": -3}]}, "items"),
        ({**VALID, "items": [{"product_id": "P001", "quantity": 10**9}]}, "items"),
        ({**VALID, "items": [{"product_id": "P001", "quantity": "two"}]}, "items"),
        ({**VALID, "items": [{"product_id": ["P001"], "quantity": 1}]}, "items"),
        ({**VALID, "items": []}, "items"),
        ({**VALID, "items": "P001"}, "items"),
        ({k: v for k, v in VALID.items() if k != "items"}, "items"),
        ({k: v for k, v in VALID.items() if k != "customer_email"}, "customer_email"),
        ({**VALID, "customer_email": "not-an-email"}, "customer_email"),
        ({**VALID, "payment_token": 42}, "payment_token"),
        ({**VALID, "payment_token": "visa"}, "payment_token"),
        ({k: v for k, v in VALID.items() if k != "payment_token"}, "payment_token"),
        ([VALID], "non_field_errors"),
        ('{"customer_email": "a@example.com", "items": [', "detail"),
        ("[" * 100_000, "detail"),
    ],
)
def test_a_bad_body_gets_a_4xx_naming_the_field_and_stores_nothing(api, body, field):
    response = post(api, body)
    assert 400 <= response.status_code < 500
    assert field in response.json(), response.json()
    assert nothing_stored()


def test_the_products_list_shows_price_and_availability(api):
    products = api.get("/api/products/").json()
    assert products == [{"product_id": "P001", "name": "Product P001", "price": "75.00", "currency": "USD",
                         "available": 10}]  # fmt: skip


def test_the_openapi_document_describes_the_order_endpoints(api):
    schema = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert schema.status_code == 200
    assert b"/api/orders/" in schema.content and b"Idempotency-Key" in schema.content
