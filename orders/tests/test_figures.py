"""The orders app's figures on the pipeline's health page and in /metrics, registered from its AppConfig."""

import pytest

from orders.models import Order

pytestmark = pytest.mark.django_db


def test_orders_per_status_show_on_the_health_page_in_its_json_and_in_the_metrics(admin_client, settings):
    settings.RABBITMQ_MANAGEMENT_URL = "http://127.0.0.1:9"  # closed: the queue figures are not needed here
    for status in ["pending", "pending", "cancelled"]:
        Order.objects.create(customer_email="a@example.com", total_amount=5, status=status)

    page = admin_client.get("/ops/health/").content.decode()
    data = admin_client.get("/ops/health/", {"format": "json"}).json()
    metrics = admin_client.get("/metrics").content.decode().splitlines()

    assert "<caption>Orders per status</caption>" in page
    assert '<tr><th scope="row">pending</th><td class="num">2</td></tr>' in page
    assert data["orders"] == {"pending": 2, "confirmed": 0, "cancelled": 1} and "figures" not in data
    assert "# HELP orderpipe_orders Orders per status." in metrics
    assert 'orderpipe_orders{status="cancelled"} 1.0' in metrics
