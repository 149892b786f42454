"""Fixtures of the browser tests (tests/browser.py has what they share besides)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model

from devstack.stack import Stack
from tests import factories
from tests.browser import CHROMIUM, CHROMIUM_ARGS, TRACE_URL_TEMPLATE, Site
from tests.harness import free_port, process_stack


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
