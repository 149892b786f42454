"""The dead-letter console in the admin: failure groups, edit and replay, replay a group, who may do it."""

from __future__ import annotations

import json

import pytest
from celery import current_app
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from eventbus.models import DeadLetter, DeadLetterReplay
from eventbus.tests.letters import an_event, handler_letter, poison_letter

pytestmark = pytest.mark.django_db

GROUPS = reverse("admin:eventbus_deadletter_groups")


def edit_url(letter: DeadLetter) -> str:
    return reverse("admin:eventbus_deadletter_edit_replay", args=[letter.pk])


def group_url(letter: DeadLetter) -> str:
    return reverse("admin:eventbus_deadletter_replay_group", args=[letter.fingerprint])


@pytest.fixture
def viewer_client(client: Client) -> Client:
    """A staff user who may look at dead letters but not change (replay) them."""
    user = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(user)
    return client


def test_the_groups_page_lists_each_failure_with_counts_and_links_to_its_letters(admin_client):
    letters = [handler_letter(ValueError("row locked")), handler_letter(ValueError("row locked again"))]
    other = poison_letter(an_event(items=[]))

    page = admin_client.get(GROUPS)

    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('class="failure-group"') == 2
    assert "inventory.reserve_stock" in html and "ValueError" in html and "row locked again" in html
    assert "inventory.events" in html and "poison" in html
    assert group_url(letters[0]) in html
    listed = admin_client.get(reverse("admin:eventbus_deadletter_changelist"), {"fingerprint": letters[0].fingerprint})
    assert {row.pk for row in listed.context["cl"].result_list} == {letter.pk for letter in letters}
    assert other.pk not in {row.pk for row in listed.context["cl"].result_list}


def test_replaying_a_group_asks_first_needs_the_csrf_token_and_records_each_replay(
    admin_client, inventory_events, django_capture_on_commit_callbacks
):
    letters = [handler_letter(ValueError("a")), handler_letter(ValueError("b"))]

    confirmation = admin_client.get(group_url(letters[0]))
    assert confirmation.status_code == 200 and "Yes, replay 2" in confirmation.content.decode()
    assert not DeadLetterReplay.objects.exists()

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(get_user_model().objects.get(username="admin"))
    assert strict.post(group_url(letters[0])).status_code == 403
    assert not DeadLetterReplay.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(group_url(letters[0]))

    assert done.status_code == 302 and done.url == GROUPS
    assert set(DeadLetterReplay.objects.values_list("actor", "outcome")) == {("admin", "sent")}
    assert DeadLetterReplay.objects.count() == 2
    assert len(inventory_events()) == 2


def test_a_bad_correction_is_shown_on_the_form_and_nothing_is_sent(admin_client, inventory_events):
    letter = poison_letter(an_event(items=[]))
    form = admin_client.get(edit_url(letter))
    assert form.status_code == 200
    assert form.context["form"]["body"].value() == json.dumps(json.loads(letter.body), indent=2)

    page = admin_client.post(edit_url(letter), {"body": letter.body.replace('"currency": "USD"', '"currency": 1')})

    assert page.status_code == 200
    assert "data does not match orders.OrderPlaced.v1" in str(page.context["form"].errors["body"])
    assert "Not sent" in page.content.decode()
    assert inventory_events() == [] and not DeadLetterReplay.objects.exists()


def test_a_good_correction_is_replayed_and_the_record_shows_on_the_letters_page(
    admin_client, inventory_events, django_capture_on_commit_callbacks
):
    letter = poison_letter(an_event(items=[]))
    fixed = letter.body.replace('"items": []', '"items": [{"productId": "P001", "quantity": 1}]')

    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(edit_url(letter), {"body": fixed})

    change_page = reverse("admin:eventbus_deadletter_change", args=[letter.pk])
    assert done.status_code == 302 and done.url == change_page
    [message] = inventory_events()
    assert json.loads(message.body) == json.loads(fixed)
    html = admin_client.get(change_page).content.decode()
    inline = html[html.index('id="replays-group"') :]
    assert "-    &quot;items&quot;: []," in inline  # the diff of what the operator changed
    assert '<td class="field-actor">' in inline and "<p>admin</p>" in inline and "<p>sent</p>" in inline


@pytest.mark.django_db(transaction=True)  # the send runs on commit, inside the view, as in production
def test_a_replay_the_broker_does_not_take_is_reported_on_the_page_and_recorded_as_not_sent(admin_client, monkeypatch):
    monkeypatch.setitem(current_app.conf, "broker_write_url", "amqp://nobody:nothing@127.0.0.1:9//")  # nothing listens
    letter = handler_letter(ValueError("a"))

    page = admin_client.post(edit_url(letter), {"body": letter.body}, follow=True)

    assert "The broker did not take the replay" in page.content.decode()
    record = DeadLetterReplay.objects.get()
    assert record.outcome == "failed" and record.error


def test_only_users_who_may_change_dead_letters_replay_them(viewer_client, inventory_events):
    letter = handler_letter(ValueError("a"))

    groups = viewer_client.get(GROUPS)
    assert groups.status_code == 200 and "Replay group" not in groups.content.decode()
    assert viewer_client.get(group_url(letter)).status_code == 403
    assert viewer_client.post(group_url(letter)).status_code == 403
    assert viewer_client.post(edit_url(letter), {"body": letter.body}).status_code == 403
    changelist = viewer_client.get(reverse("admin:eventbus_deadletter_changelist"))
    actions = changelist.context["action_form"]
    assert "replay" not in (dict(actions.fields["action"].choices) if actions else {})
    assert (
        "Edit and replay"
        not in viewer_client.get(reverse("admin:eventbus_deadletter_change", args=[letter.pk])).content.decode()
    )
    assert inventory_events() == [] and not DeadLetterReplay.objects.exists()
