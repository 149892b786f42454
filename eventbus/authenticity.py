"""Is a message from whom it may come from? An event from its producer, a handler task from its own service.

RabbitMQ vouches for the sender: it refuses a message whose AMQP `user_id` is not the user of the
connection it came on, so `user_id` names the broker user that sent it (eventbus.identities). A message
without one, or from another user, is forged, with one exception: an event an operator replayed from the
dead-letter store, which vouches for it (the replay names the dead letter, and the body must be the one the
store sent). EVENTBUS_VERIFY_PUBLISHER switches the checks off, for a broker without identities.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from kombu.message import Message

from eventbus import deadletters
from eventbus.identities import publisher_of, service_user


class ForgedMessage(Exception):
    """A message whose authenticated sender is not the one allowed to send it."""


def event_forgery(message: Message, event_type: str) -> str | None:
    """Why an event of `event_type` in `message` is forged; None when it is authentic (or checks are off)."""
    if not settings.EVENTBUS_VERIFY_PUBLISHER:
        return None
    sender, publisher = message.properties.get("user_id"), publisher_of(event_type)
    if sender == publisher:
        return None
    replayed = (message.headers or {}).get(deadletters.REPLAY_HEADER)
    if replayed is not None and deadletters.replay_vouched(replayed, message.body):
        return None
    return f"{event_type} is published by {publisher!r} only; this one came from {_who(sender)}"


def check_task_sender(service: str, properties: dict[str, Any] | None) -> None:
    """Raise ForgedMessage unless a handler task of `service` was sent by that service's own user (its worker's
    intake, or a retry). Other users may write to the exchanges that reach every task queue (delayed delivery)."""
    if not settings.EVENTBUS_VERIFY_PUBLISHER:
        return
    sender = (properties or {}).get("user_id")
    if sender != service_user(service):
        raise ForgedMessage(f"a {service} handler task must come from {service_user(service)!r}, not {_who(sender)}")


def _who(sender: str | None) -> str:
    return repr(sender) if sender else "a sender without an authenticated user_id"
