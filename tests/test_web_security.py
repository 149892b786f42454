"""The web side as an outsider meets it: debug pages that show no secret, and an admin login that
locks a username out of an address after repeated wrong passwords."""

from __future__ import annotations

import secrets
import sys

import pytest
from django.test import RequestFactory
from django.views.debug import ExceptionReporter

pytestmark = pytest.mark.django_db
# Made at run time: the debug page shows the source lines around each frame, this file's included.
BROKER_PASSWORD, REDIS_PASSWORD, METRICS_TOKEN = (secrets.token_urlsafe(12) for _ in range(3))
CALLER_TOKEN, FORM_TOKEN = (f"tok_{secrets.token_hex(8)}" for _ in range(2))


def place_order(payment_token: str, serializer_data: dict, kwargs: dict) -> None:
    """Stands for the API view and the services it calls: locals that hold the caller's token."""
    raise RuntimeError("the order total fails the money pattern")


def debug_page(request) -> str:
    """Django's debug page (and the text of its error e-mails) for an error raised in place_order."""
    try:
        token = CALLER_TOKEN
        place_order(token, {"payment_token": token, "items": []}, {"order": 1, "payment_token": token})
    except RuntimeError:
        reporter = ExceptionReporter(request, *sys.exc_info())
        return reporter.get_traceback_html() + reporter.get_traceback_text()
    raise AssertionError("place_order did not raise")


def test_the_debug_page_hides_connection_passwords_the_database_path_and_the_callers_token(settings):
    # Given DEBUG on and connection settings that hold passwords, as in a deployment
    settings.DEBUG = True
    settings.CELERY_BROKER_URL = f"amqp://orders:{BROKER_PASSWORD}@mq.example.com:5672/orders"
    settings.REDIS_URL = f"redis://:{REDIS_PASSWORD}@cache.example.com:6379/0"
    settings.RABBITMQ_MANAGEMENT_URL = f"https://orders:{BROKER_PASSWORD}@mq.example.com:15671"
    settings.DATABASE_URL = "sqlite:////srv/orders/.run/db.sqlite3"
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"],
                                                      "LOCATION": settings.REDIS_URL}}  # fmt: skip
    # And a form post (the admin's order form) carrying a token, from a server whose environment has the URLs
    request = RequestFactory().post(
        "/admin/orders/order/add/", {"customer_email": "a@example.com", "payment_token": FORM_TOKEN},
        HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}", HTTP_REFERER=settings.RABBITMQ_MANAGEMENT_URL,
    )  # fmt: skip

    page = debug_page(request)

    # Then the page is there, but none of the secrets is on it
    assert "the order total fails the money pattern" in page and "place_order" in page
    for secret in (BROKER_PASSWORD, REDIS_PASSWORD, "/srv/orders/.run", settings.RUN_DIR.as_posix(),
                   CALLER_TOKEN, FORM_TOKEN, METRICS_TOKEN, settings.SECRET_KEY):  # fmt: skip
        assert secret not in page, f"{secret} is shown"
    assert "CELERY_BROKER_URL" in page and "********************" in page  # hidden, not left out


@pytest.fixture
def admin_login(client, django_user_model, settings):
    """Login lockout on (the test settings turn it off): 3 failures per username and address."""
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_superuser("admin", "admin@example.com", "the-right-password")

    def attempt(password: str, address: str = "127.0.0.1", forwarded_for: str | None = None):
        extra = {"REMOTE_ADDR": address} | ({"HTTP_X_FORWARDED_FOR": forwarded_for} if forwarded_for else {})
        client.logout()
        return client.post("/admin/login/?next=/admin/", {"username": "admin", "password": password}, **extra)

    return attempt


def test_the_admin_locks_out_a_username_and_address_after_repeated_wrong_passwords(admin_login):
    # Given wrong passwords from one address, each with another forged X-Forwarded-For
    statuses = [admin_login("wrong", forwarded_for=f"203.0.113.{n}").status_code for n in range(3)]

    # Then the third is answered 429, and from then on even the right password is refused there
    assert statuses == [200, 200, 429]  # 200: the form again, with its error
    locked = admin_login("the-right-password", forwarded_for="203.0.113.99")
    assert locked.status_code == 429
    assert "_auth_user_id" not in locked.wsgi_request.session

    # While the same user from another address still gets in: a stranger cannot lock the admin out
    assert admin_login("the-right-password", address="198.51.100.7").status_code == 302


def test_a_right_password_before_the_limit_resets_the_count(admin_login):
    for _ in range(2):
        admin_login("wrong")
    assert admin_login("the-right-password").status_code == 302
    for _ in range(2):
        admin_login("wrong")
    assert admin_login("the-right-password").status_code == 302
