"""In headless Chromium: log into the admin, place an order with three lines, watch it become
confirmed on its page and its trace's waterfall reach every handler, then find its tasks in Flower; open the
API docs and see them render from the site's own files. Screenshots go to SCREENSHOT_DIR."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model

from devstack.stack import Stack
from tests import factories
from tests.harness import ROOT, free_port, process_stack

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.django_db(transaction=True)]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / ".run" / "screenshots"))
# Without these, Chromium keeps reaching for Google services that this closed network refuses.
TRACE_URL_TEMPLATE = "http://127.0.0.1:16686/trace/{trace_id}"  # Jaeger's UI, as docker-compose.yml has it
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip


@dataclass(frozen=True)
class Site:
    web: str
    flower: str
    flower_auth: tuple[str, str]


@pytest.fixture(scope="session")
def site(workers: Stack, stack_env: dict[str, str]) -> Iterator[Site]:
    """The web process and Flower, started on free ports beside the suite's workers."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    web_port, flower_port = free_port(), free_port()
    flower_auth = ("admin", secrets.token_urlsafe(12))
    env = {**stack_env, "FLOWER_URL": f"http://127.0.0.1:{flower_port}",
           "FLOWER_BASIC_AUTH": ":".join(flower_auth),
           # The web process traces (to its log), so an order placed in the admin starts a trace the page links.
           "OTEL_TRACES_EXPORTER": "console", "TRACE_URL_TEMPLATE": TRACE_URL_TEMPLATE}  # fmt: skip
    stack = process_stack(env, web_port=web_port, flower_port=flower_port)
    try:
        stack.start_flower()
        stack.start_web()
        stack.wait_for_port("flower", flower_port)
        stack.wait_for_port("web", web_port)
        yield Site(f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{flower_port}", flower_auth)
    finally:
        stack.stop()


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def pick_product(page, row: int, sku: str) -> None:
    """Choose a product in the admin's autocomplete (select2) of one inline row."""
    page.locator(f"#lines-{row} .field-product .select2-selection").click()
    page.locator(".select2-container--open .select2-search__field").fill(sku)
    page.locator(".select2-results__option", has_text=sku).first.click()


@pytest.fixture
def operator_password() -> str:
    """An admin user and three products. Set up before the browser: Playwright's event loop and
    Django's ORM do not share a thread."""
    password = secrets.token_urlsafe(12)
    get_user_model().objects.create_superuser("admin", "admin@example.com", password)
    factories.product("P001", name="Espresso beans 1 kg", price="75.00", stock=20)
    factories.product("P002", name="Burr grinder", price="149.00", stock=5)
    factories.product("P003", name="Milk jug", price="19.00", stock=5)
    return password


def test_an_order_placed_in_the_admin_is_confirmed_and_its_tasks_show_in_flower(site: Site, operator_password, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    password = operator_password
    page = browser.new_page(viewport={"width": 1400, "height": 1000})

    # Given a logged-in operator
    page.goto(f"{site.web}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/$"))

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

    # And Flower, behind its basic auth, lists the handler tasks of all three services
    flower = browser.new_context(
        http_credentials={"username": site.flower_auth[0], "password": site.flower_auth[1]},
        viewport={"width": 1400, "height": 900},
    ).new_page()
    flower.goto(f"{site.flower}/tasks")
    for task in ["inventory.reserve_stock", "payments.authorize_payment", "orders.stock_reserved"]:
        flower.locator(f"text={task}").first.wait_for(timeout=30_000)
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
