"""In headless Chromium: the dead-letter console. An operator finds a failure group, corrects a letter's body
(a bad correction is refused on the form), replays it, sees the replay recorded on the letter's page and the
event handled by the real inventory worker, then replays the rest of the group. Screenshots go to
SCREENSHOT_DIR."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from eventbus.errors import PermanentError
from eventbus.models import DeadLetter
from eventbus.tests.letters import handler_letter, poison_letter
from tests import factories
from tests.browser import SCREENSHOTS, Site, admin_page

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@dataclass(frozen=True)
class Failures:
    letter: DeadLetter  # the one the operator corrects
    event_id: str


@pytest.fixture
def failures(operator_password) -> Failures:
    """Two OrderPlaced events whose line orders zero items, filed as the intake files poison (one failure group),
    and a payment handler's failure (another). Set up before the browser, like the operator."""
    letters = []
    for _ in range(2):
        event = factories.order_placed_event(("P001", 1))
        event["data"]["items"][0]["quantity"] = 0
        letters.append(poison_letter(event))
    handler_letter(PermanentError("the gateway refused the token"), handler="payments.authorize_payment")
    return Failures(letters[0], json.loads(letters[0].body)["id"])


def test_an_operator_corrects_and_replays_a_dead_letter_and_a_worker_handles_it(
    site: Site,
    operator_password,
    failures: Failures,
    browser,
):
    page = admin_page(browser, site, operator_password)

    # Given the failure groups, reached from the dead letters' list
    page.goto(f"{site.web}/admin/eventbus/deadletter/")
    page.click("text=By failure group")
    group = page.locator(f'tr.failure-group[data-fingerprint="{failures.letter.fingerprint}"]')
    assert "orders.OrderPlaced.v1" in group.inner_text() and "inventory.events" in group.inner_text()
    assert group.locator("td.num").first.inner_text() == "2"  # unhandled
    assert page.locator("tr.failure-group").count() == 2
    page.screenshot(path=SCREENSHOTS / "admin-dead-letter-groups.png", full_page=True)

    # When the operator opens a letter of the group and corrects its body badly, it is refused and nothing goes
    page.goto(f"{site.web}/admin/eventbus/deadletter/{failures.letter.pk}/change/")
    page.click("text=Edit and replay")
    body = page.locator("#id_body")
    original = body.input_value()
    assert '"quantity": 0' in original
    body.fill(original.replace('"quantity": 0', '"quantity": "one"'))
    page.click("input[name=_replay]")
    assert "Not sent" in page.locator(".errornote").inner_text()
    assert "items.0.quantity" in page.locator(".errorlist").inner_text()
    page.screenshot(path=SCREENSHOTS / "admin-dead-letter-edit-refused.png", full_page=True)

    # And then corrects it well and replays it
    page.locator("#id_body").fill(original.replace('"quantity": 0', '"quantity": 1'))
    page.click("input[name=_replay]")
    page.wait_for_url(re.compile(rf"/admin/eventbus/deadletter/{failures.letter.pk}/change/$"))

    # Then the letter's page records the replay: who, what changed, and that the broker took it
    assert "(corrected) to inventory.events" in page.locator(".messagelist").inner_text()
    replays = page.locator("#replays-group")
    assert replays.locator(".field-actor").inner_text().strip() == "admin"
    assert replays.locator(".field-outcome").inner_text().strip() == "sent"
    assert '+        "quantity": 1' in replays.locator(".replay-diff").inner_text()
    page.screenshot(path=SCREENSHOTS / "admin-dead-letter-replayed.png", full_page=True)

    # And the inventory worker handles the corrected event (its inbox row shows in the admin)
    for _ in range(60):
        page.goto(f"{site.web}/admin/eventbus/inboxmessage/?q={failures.event_id}")
        if page.locator("#result_list", has_text="inventory.reserve_stock").count():
            break
        page.wait_for_timeout(500)
    assert page.locator("#result_list", has_text="inventory.reserve_stock").count() == 1

    # And the rest of the group is replayed from the groups page, after a confirmation
    page.goto(f"{site.web}/admin/eventbus/deadletter/groups/")
    assert group.locator("td.num").first.inner_text() == "1"
    group.locator("a.replay-group").click()
    page.click("input[type=submit][value='Yes, replay 1']")
    page.wait_for_url(re.compile(r"/admin/eventbus/deadletter/groups/$"))
    assert "Replayed 1 dead letter(s)" in page.locator(".messagelist").inner_text()
