"""In headless Chromium: log into the admin, place an order with three lines, watch it become
confirmed on its page and its trace's waterfall reach every handler, then find its tasks in Flower; open the
API docs and see them render from the site's own files. Screenshots go to SCREENSHOT_DIR."""

from __future__ import annotations

import re

import pytest
import requests

from tests.browser import SCREENSHOTS, TRACE_URL_TEMPLATE, Site, admin_page

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def pick_product(page, row: int, sku: str) -> None:
    """Choose a product in the admin's autocomplete (select2) of one inline row."""
    page.locator(f"#lines-{row} .field-product .select2-selection").click()
    page.locator(".select2-container--open .select2-search__field").fill(sku)
    page.locator(".select2-results__option", has_text=sku).first.click()


def test_an_order_placed_in_the_admin_is_confirmed_and_its_tasks_show_in_flower(site: Site, operator_password, browser):
    # Given a logged-in operator
    page = admin_page(browser, site, operator_password)

    # When they place an order with three lines, the third in a row they add
    page.goto(f"{site.web}/admin/orders/order/")
    page.click(".object-tools a.addlink")
    page.wait_for_url(re.compile(r"/admin/orders/order/add/$"))
    page.fill("#id_customer_email", "buyer@example.com")
    pick_product(page, 0, "P001")
    page.fill("#id_lines-0-quantity", "2")
    pick_product(page, 1, "P002")
    page.fill("#id_lines-1-quantity", "1")
    page.click("text=Add another line")
    pick_product(page, 2, "P003")
    page.fill("#id_lines-2-quantity", "1")
    page.screenshot(path=SCREENSHOTS / "admin-order-add.png", full_page=True)
    page.click("input[name=_save]")
    page.wait_for_url(re.compile(r"/admin/orders/order/[0-9a-f-]{36}/change/"))

    # Then its page shows it confirmed, with its timeline, after the saga ran on the workers
    status = page.locator(".field-status .readonly")
    for _ in range(60):
        if (
            status.inner_text().strip().lower() == "confirmed"
            and page.locator("text=payments.PaymentCaptured.v1").count()
        ):
            break
        page.wait_for_timeout(1000)
        page.reload()
    assert status.inner_text().strip().lower() == "confirmed"
    assert page.locator(".field-total_amount .readonly").inner_text().strip() == "318.00"
    timeline = page.locator(".order-timeline").inner_text()
    for event in ["orders.OrderPlaced.v1", "inventory.StockReserved.v1", "payments.PaymentAuthorized.v1",
                  "orders.OrderConfirmed.v1", "payments.PaymentCaptured.v1"]:  # fmt: skip
        assert event in timeline
    page.screenshot(path=SCREENSHOTS / "admin-order-confirmed.png", full_page=True)

    # And its trace, drawn as a waterfall below, reaches every handler: each hop handled, each delivery timed
    waterfall = page.locator("#trace-waterfall")
    for _ in range(30):
        if "Every hop handled" in waterfall.locator(".wf-state").inner_text():
            break
        page.wait_for_timeout(1000)
        page.reload()
    assert "Every hop handled" in waterfall.locator(".wf-state").inner_text()
    lanes = waterfall.locator("tr.wf-lane")
    statuses = [lanes.nth(i).get_attribute("data-status") for i in range(lanes.count())]
    handlers = [name for i in range(lanes.count()) if (name := lanes.nth(i).get_attribute("data-handler"))]
    assert set(statuses) == {"done"} and lanes.count() == 11  # five events, six handlings
    assert set(handlers) == {"inventory.reserve_stock", "payments.authorize_payment", "orders.stock_reserved",
                             "orders.payment_authorized", "inventory.commit_stock",
                             "payments.capture_payment"}  # fmt: skip
    for hop in ["published", "delivered", "started", "handled"]:
        cells = waterfall.locator(f'td[data-hop="{hop}"]')
        assert cells.count() and all(cells.nth(i).inner_text().startswith("+") for i in range(cells.count())), hop
    assert waterfall.locator("tr.wf-lane .wf-bar.wf-handler").count() == len(handlers)
    trace_id = waterfall.locator(".trace-id code").inner_text()
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), "one trace id for the whole saga"
    assert waterfall.locator("a.trace-link").get_attribute("href") == TRACE_URL_TEMPLATE.format(trace_id=trace_id)
    waterfall.scroll_into_view_if_needed()
    waterfall.screenshot(path=SCREENSHOTS / "admin-order-waterfall.png")

    # And Flower, behind its basic auth, lists the handler tasks of all three services. The orders worker may
    # take the two legs' events together, as one orders.handle_batch task, when they arrive at once.
    flower = browser.new_context(
        http_credentials={"username": site.flower_auth[0], "password": site.flower_auth[1]},
        viewport={"width": 1400, "height": 900},
    ).new_page()
    flower.goto(f"{site.flower}/tasks")
    handlers = [("inventory", "reserve_stock"), ("payments", "authorize_payment"), ("orders", "stock_reserved")]
    for service, handler in handlers:
        flower.locator(f"text=/{service}\\.({handler}|handle_batch)/").first.wait_for(timeout=30_000)
    flower.screenshot(path=SCREENSHOTS / "flower-tasks.png", full_page=True)
    assert requests.get(f"{site.flower}/tasks", timeout=10).status_code == 401


def test_the_api_docs_render_from_the_sites_own_files(site: Site, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    # When a visitor opens the interactive API docs
    page.goto(f"{site.web}/api/docs/")

    # Then Swagger UI renders the schema's operations, placing an order among them
    operation = page.locator(".opblock-post .opblock-summary-path", has_text="/api/orders/").first
    operation.wait_for(timeout=30_000)
    assert page.locator(".opblock").count() >= 3
    page.screenshot(path=SCREENSHOTS / "api-docs.png", full_page=True)

    # And everything it loaded came from the site itself: no CDN, no request to another origin
    assert any(url.endswith("/swagger-ui-bundle.js") for url in requested)
    elsewhere = [url for url in requested if not url.startswith(f"{site.web}/") and not url.startswith("data:")]
    assert not elsewhere, f"requests left for another origin: {elsewhere}"
