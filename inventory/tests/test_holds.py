"""Stock held for an order that is never decided expires; a confirmation commits only stock held for it."""

import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from eventbus.errors import PermanentError
from eventbus.models import OutboxMessage
from inventory.models import Product, Reservation
from inventory.services import reservation_expire_stale, stock_release, stock_reserve
from inventory.tasks import release_stale_holds
from orderproj.celery import app
from orders.events import OrderConfirmed, OrderItem
from tests import factories
from tests.delivery import deliver

pytestmark = pytest.mark.django_db


def age(order_id: uuid.UUID, *, seconds: int) -> None:
    Reservation.objects.filter(order_id=order_id).update(created_at=timezone.now() - timedelta(seconds=seconds))


def stock(sku: str = "P002") -> tuple[int, int]:
    product = Product.objects.get(sku=sku)
    return product.stock_on_hand, product.stock_reserved


def test_stock_held_for_an_order_that_does_not_exist_is_released_when_the_hold_expires(settings):
    settings.HOLD_EXPIRY_SECONDS = 600
    factories.product("P002", stock=25)
    # Given the forged OrderPlaced of issue 10 (no such order) holding 10 units, and a live order's hold
    forged = factories.order_placed(("P002", 10), total="99999.00")
    live = factories.order_placed(("P002", 1))
    deliver("inventory.reserve_stock", forged, task_id="forged")
    deliver("inventory.reserve_stock", live, task_id="live")
    age(forged.order_id, seconds=601)
    age(live.order_id, seconds=599)

    # When beat's task runs, twice
    assert release_stale_holds() == 1
    assert release_stale_holds() == 0

    # Then the forged hold is released once, announced as usual, and the live one stays held
    assert stock() == (25, 1)
    statuses = dict(Reservation.objects.values_list("order_id", "status"))
    assert statuses == {forged.order_id: Reservation.Status.EXPIRED, live.order_id: Reservation.Status.HELD}
    released = OutboxMessage.objects.get(event_type="inventory.StockReleased.v1")
    assert released.correlation_id == str(forged.order_id)
    assert released.body["data"]["lines"] == [{"productId": "P002", "quantity": 10}]


def test_beat_runs_the_expiry_on_the_inventory_queue():
    scheduled = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert release_stale_holds.name in scheduled
    assert app.amqp.router.route({}, release_stale_holds.name)["queue"].name == "inventory.tasks"


def confirmed(order_id: uuid.UUID, *lines: tuple[str, int]) -> OrderConfirmed:
    items = [OrderItem(product_id=sku, quantity=qty) for sku, qty in lines]
    return OrderConfirmed(order_id=order_id, items=items, total_amount="20.00", currency="USD")


def test_a_confirmation_commits_the_stock_held_for_its_lines_once():
    factories.product("P002", stock=25)
    order_id = uuid.uuid4()
    stock_reserve(order_id=order_id, lines=[("P002", 1), ("P002", 1)])

    deliver("inventory.commit_stock", confirmed(order_id, ("P002", 2)), task_id="first")
    deliver("inventory.commit_stock", confirmed(order_id, ("P002", 2)), task_id="again")  # a second event

    assert stock() == (23, 0)
    assert Reservation.objects.get(order_id=order_id).status == Reservation.Status.COMMITTED


def _never_reserved(order_id: uuid.UUID) -> None:
    pass


def _released(order_id: uuid.UUID) -> None:
    stock_reserve(order_id=order_id, lines=[("P002", 2)])
    stock_release(order_id=order_id)


def _expired(order_id: uuid.UUID) -> None:
    stock_reserve(order_id=order_id, lines=[("P002", 2)])
    age(order_id, seconds=3600)
    reservation_expire_stale(older_than=timedelta(minutes=10))


def _other_lines(order_id: uuid.UUID) -> None:
    stock_reserve(order_id=order_id, lines=[("P002", 1)])


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        (_never_reserved, "holds no stock for order"),
        (_released, "is released"),
        (_expired, "is expired"),
        (_other_lines, "holds P002 x 1"),
    ],
    ids=["never reserved", "released", "expired", "other lines"],
)
def test_a_confirmation_of_stock_inventory_does_not_hold_is_refused(given, refusal):
    """Issue 10: a forged OrderConfirmed committed stock. What inventory can check on its own is that
    it holds stock for the order, and for exactly the confirmed lines."""
    factories.product("P002", stock=25)
    order_id = uuid.uuid4()
    given(order_id)
    before = stock(), Reservation.objects.filter(order_id=order_id).values_list("status", flat=True).first()

    with pytest.raises(PermanentError, match=refusal):
        deliver("inventory.commit_stock", confirmed(order_id, ("P002", 2)))

    assert (stock(), Reservation.objects.filter(order_id=order_id).values_list("status", flat=True).first()) == before
