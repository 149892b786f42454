"""The demo gateway's tok_flaky, through the real handler task: its failures follow the attempts, not Redis."""

import pytest
import redis
from django.core.cache import cache

from eventbus.envelope import new_event
from eventbus.errors import TransientError
from eventbus.sealing import seal
from orderproj.celery import app
from payments.models import Payment
from tests import factories

pytestmark = pytest.mark.django_db
CLOSED_PORT_REDIS = "redis://127.0.0.1:9/0"


def run_attempt(raw_event: dict, attempt: int) -> dict:
    """Call the payments handler task's function as delivery `attempt` of the event would."""
    task = app.tasks["payments.authorize_payment"]
    task.push_request(id="authorize-task", retries=attempt - 1)
    try:
        return task.run(raw_event)
    finally:
        task.pop_request()


def test_tok_flaky_is_authorized_on_the_third_attempt_with_redis_unreachable(settings):
    # Given Redis is unreachable for the cache and for everything else
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": CLOSED_PORT_REDIS}}
    settings.REDIS_URL = CLOSED_PORT_REDIS
    with pytest.raises(redis.ConnectionError):
        cache.get("anything")
    placed = factories.order_placed(("P001", 1), total="20.00").model_copy(update={"payment_token": seal("tok_flaky")})
    raw = new_event(placed).to_dict()

    # When the payments handler gets the order: the gateway times out on the first two attempts
    for attempt in (1, 2):
        with pytest.raises(TransientError, match="tok_flaky"):
            run_attempt(raw, attempt)
        assert not Payment.objects.exists()

    # Then the third attempt authorizes the payment, once
    assert run_attempt(raw, 3) == {"outcome": "done", "attempt": 3}
    assert Payment.objects.get(order_id=placed.order_id).status == Payment.Status.AUTHORIZED
