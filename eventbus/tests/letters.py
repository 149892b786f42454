"""Dead letters as the pipeline files them, for the tests of the dead-letter store and console."""

from __future__ import annotations

import json

from eventbus import deadletters
from eventbus.envelope import CONTENT_TYPE, PoisonMessage, from_dict
from eventbus.models import DeadLetter
from eventbus.names import service_of_task, task_queue_name
from tests import factories


def an_event(**changes: object) -> dict:
    """An OrderPlaced CloudEvent, as orders publishes it, with `changes` made to its data."""
    event = factories.order_placed_event()
    event["data"].update(changes)
    return event


def poison_letter(raw: dict) -> DeadLetter:
    """File `raw`, whose data breaks its contract, as the intake files it."""
    try:
        from_dict(raw)
    except PoisonMessage as refused:
        error = str(refused)
    else:
        raise AssertionError("a poison letter needs a body its contract refuses")
    return deadletters.store(
        reason=DeadLetter.Reason.POISON,
        queue="inventory.events",
        body=json.dumps(raw).encode(),
        content_type=CONTENT_TYPE,
        error=error,
    )


def handler_letter(error: Exception, *, handler: str = "inventory.reserve_stock", event: dict | None = None):
    """File a letter as handling does when a handler fails for good."""
    return deadletters.store(
        reason=DeadLetter.Reason.PERMANENT,
        queue=task_queue_name(service_of_task(handler)),
        handler=handler,
        body=event or an_event(),
        error=f"{type(error).__name__}: {error}",
    )
