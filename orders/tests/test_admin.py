"""Placing and watching orders in the admin."""

import pytest
from django.contrib.auth import get_user_model

from eventbus.models import OutboxMessage
from orders.models import Order
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-boss-123")
    client.force_login(user)
    factories.product("P001", price="75.00")
    factories.product("P002", price="5.00")
    return client


def add_form(*lines, email="a@example.com", token="tok_visa") -> dict:
    data = {
        "customer_email": email, "payment_token": token,
        "lines-TOTAL_FORMS": str(len(lines)), "lines-INITIAL_FORMS": "0",
        "lines-MIN_NUM_FORMS": "0", "lines-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    for index, (sku, quantity) in enumerate(lines):
        data[f"lines-{index}-product"] = sku
        data[f"lines-{index}-quantity"] = str(quantity)
    return data


def test_saving_the_add_form_places_the_order_through_the_service_with_all_its_lines(staff):
    response = staff.post("/admin/orders/order/add/", add_form(("P001", 2), ("P002", 1)))

    order = Order.objects.get()
    assert response.status_code == 302 and str(order.id) in response["Location"]
    assert order.total_amount == 155 and order.lines.count() == 2
    placed = OutboxMessage.objects.get(event_type="orders.OrderPlaced.v1").body["data"]
    assert placed["items"] == [{"productId": "P001", "quantity": 2}, {"productId": "P002", "quantity": 1}]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (add_form(("P001", 0)), "greater than or equal to 1"),
        (add_form(("P001", 5000)), "less than or equal to 1000"),
        (add_form(), "at least one item"),
        (add_form(("P001", 1), token="visa"), "tok_visa"),
        (add_form(("P001", 1), ("P999", 1)), "Select a valid choice"),
        (add_form(("P001", 1), email="not-an-address"), "Enter a valid email address"),
    ],
)
def test_a_bad_order_is_shown_back_with_its_error_and_nothing_is_stored(staff, form, message):
    response = staff.post("/admin/orders/order/add/", form)
    assert response.status_code == 200 and message in response.content.decode()
    assert not Order.objects.exists() and not OutboxMessage.objects.exists()


def test_add_order_in_the_admin_opens_the_form_with_a_row_per_line_and_a_product_search(staff):
    changelist = staff.get("/admin/orders/order/").content.decode()
    assert 'href="/admin/orders/order/add/"' in changelist

    page = staff.get("/admin/orders/order/add/").content.decode()
    assert 'name="customer_email"' in page and 'name="payment_token"' in page
    assert 'id="lines-0"' in page and 'id="lines-1"' in page and 'id="lines-empty"' in page
    assert "admin-autocomplete" in page and "admin/js/inlines.js" in page


def test_the_add_form_is_for_users_who_may_add_orders(client):
    clerk = get_user_model().objects.create_user("clerk", "clerk@example.com", "pw-clerk-123", is_staff=True)
    client.force_login(clerk)
    assert client.get("/admin/orders/order/add/").status_code == 403
    assert client.post("/admin/orders/order/add/", add_form(("P001", 1))).status_code == 403
    assert not Order.objects.exists()


def test_the_order_page_shows_its_timeline_with_flower_links_and_the_list_counts_statuses(staff, settings):
    staff.post("/admin/orders/order/add/", add_form(("P001", 1)))
    order = Order.objects.get()

    page = staff.get(f"/admin/orders/order/{order.id}/change/").content.decode()
    assert "orders.OrderPlaced.v1" in page and "inventory.reserve_stock" in page
    assert f"{settings.FLOWER_URL}/task/" in page

    listing = staff.get("/admin/orders/order/").content.decode()
    assert "Pending (1)" in listing and "Confirmed (0)" in listing


def test_every_admin_list_opens(staff):
    for url in ["/admin/inventory/product/", "/admin/inventory/reservation/", "/admin/payments/payment/",
                "/admin/eventbus/outboxmessage/", "/admin/eventbus/deadletter/", "/admin/eventbus/inboxmessage/",
                "/admin/django_celery_results/taskresult/", "/admin/django_celery_beat/periodictask/",
                "/admin/orders/catalogproduct/"]:  # fmt: skip
        assert staff.get(url).status_code == 200, url
