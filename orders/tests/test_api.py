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


RAW_LINE = (
    '{"customer_email": "a@example.com", "payment_token": "tok_visa", '
    '"items": [{"product_id": "P001", "quantity": %s}]}'
)


@pytest.mark.parametrize("quantity", ['"2"', '" 2 "', "2.0", "1e2", "true"])
def test_a_quantity_must_be_a_json_integer_not_a_string_a_float_or_a_boolean(api, quantity):
    response = post(api, RAW_LINE % quantity)
    assert response.status_code == 400, response.content
    assert response.json()["items"] == {"0": {"quantity": ["A valid integer is required."]}}
    assert nothing_stored()


@pytest.mark.parametrize(
    "raw",
    [
        '{"customer_email": "a@example.com", "customer_email": "b@example.com", "payment_token": "tok_visa",'
        ' "items": [{"product_id": "P001", "quantity": 2}]}',
        '{"customer_email": "a@example.com", "payment_token": "tok_visa",'
        ' "items": [{"product_id": "P001", "quantity": 1, "quantity": 9}]}',
    ],
    ids=["top-level", "in-a-line"],
)
def test_a_body_with_a_repeated_key_is_a_400(api, raw):
    response = post(api, raw)
    assert response.status_code == 400
    assert "duplicate key" in response.json()["detail"]
    assert nothing_stored()


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"])
def test_only_json_is_accepted_so_a_form_on_another_site_cannot_place_an_order(api, content_type):
    form = {"customer_email": "a@example.com", "payment_token": "tok_visa", "items": "P001"}
    if content_type == "multipart/form-data":
        response = api.post("/api/orders/", form, format="multipart")
    elif content_type == "text/plain":
        response = api.post("/api/orders/", json.dumps(VALID), content_type=content_type)
    else:
        response = api.post("/api/orders/", "customer_email=a%40example.com&payment_token=tok_visa",
                            content_type=content_type)  # fmt: skip
    assert response.status_code == 415
    assert "Unsupported media type" in response.json()["detail"]
    assert nothing_stored()


def test_an_order_whose_total_does_not_fit_is_a_400_naming_the_items(api):
    factories.product("P900", price="9999999999.99", stock=5000)
    response = post(api, {**VALID, "items": [{"product_id": "P900", "quantity": 1000}]})
    assert response.status_code == 400
    assert response.json() == {"items": ["The order total exceeds 999999999999.99 USD."]}
    assert nothing_stored()

    # The largest total that fits is still an order
    factories.product("P901", price="999999999.99", stock=5000)
    response = post(api, {**VALID, "items": [{"product_id": "P901", "quantity": 1000}]})
    assert response.status_code == 201 and response.json()["total_amount"] == "999999999990.00"


# --- Errors are JSON, with DEBUG on too, and show nothing of the server's insides.

SECRETS = ("s3cret-broker-password", "tok_secret_caller", "<html", "Traceback")


@pytest.fixture
def debug(settings):
    settings.DEBUG = True
    settings.CELERY_BROKER_URL = "amqp://orders:s3cret-broker-password@127.0.0.1:5672/orders"


def shows_nothing_inside(response) -> bool:
    text = response.content.decode(errors="replace")
    return response["Content-Type"] == "application/json" and not any(secret in text for secret in SECRETS)


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_a_body_over_the_upload_limit_is_a_json_413_even_with_debug_on(api, debug, content_type):
    body = json.dumps({**VALID, "payment_token": "tok_secret_caller", "padding": "x" * 3_000_000})
    response = api.post("/api/orders/", body, content_type=content_type)
    assert response.status_code == 413
    assert response.json() == {"detail": "The request body is too large."}
    assert shows_nothing_inside(response) and nothing_stored()


def test_an_unexpected_error_is_a_json_500_even_with_debug_on(api, debug, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr("orders.api.order_place", broken)
    api.raise_request_exception = False
    response = post(api, {**VALID, "payment_token": "tok_secret_caller"})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    assert shows_nothing_inside(response)


def test_an_unknown_api_path_is_a_json_404_even_with_debug_on(api, debug):
    response = api.get("/api/no-such-thing/")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}
    assert shows_nothing_inside(response)


# --- Rate limits (off in the test settings; turned on here).


@pytest.fixture
def throttled(settings):
    """Three requests a minute per client; counted in a cache of this test's own."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"anon": "3/min", "user": "5/min"}}
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"throttle-{uuid.uuid4()}"}}  # fmt: skip


def test_a_client_over_its_rate_gets_a_json_429_and_places_nothing_more(api, throttled):
    statuses = [post(api, VALID).status_code for _ in range(3)]
    over = post(api, VALID)
    assert statuses == [201, 201, 201]
    assert over.status_code == 429 and "throttled" in over.json()["detail"] and int(over["Retry-After"]) > 0
    assert Order.objects.count() == 3

    # Another address has its own allowance; a forged X-Forwarded-For does not make a new client
    assert post(api, VALID, **{"X-Forwarded-For": "203.0.113.9"}).status_code == 429
    assert api.post("/api/orders/", json.dumps(VALID), content_type="application/json",
                    REMOTE_ADDR="198.51.100.7").status_code == 201  # fmt: skip


def test_a_signed_in_user_is_limited_per_user(api, throttled, django_user_model):
    api.force_login(django_user_model.objects.create_user("clerk", password="x"))
    statuses = [api.get("/api/products/").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]


def test_the_throttles_let_requests_through_when_the_cache_is_down(api, throttled, settings, caplog):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0"}}  # fmt: skip
    statuses = [post(api, VALID).status_code for _ in range(5)]
    assert statuses == [201] * 5
    assert "the cache is unreachable" in caplog.text
