"""What the browser tests share: headless Debian Chromium, the site they drive, and logging into the admin.

Their fixtures (`site`, `browser`, `operator_password`) are in tests/conftest.py."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tests.harness import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / ".run" / "screenshots"))
TRACE_URL_TEMPLATE = "http://127.0.0.1:16686/trace/{trace_id}"  # Jaeger's UI, as docker-compose.yml has it
# Without these, Chromium keeps reaching for Google services that this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip


@dataclass(frozen=True)
class Site:
    web: str
    flower: str
    flower_auth: tuple[str, str]


def admin_page(browser, site: Site, password: str):
    """A new page, logged into the admin as `admin`; screenshots will have somewhere to go."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{site.web}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/$"))
    return page
