"""Inventory writes: products, and stock held for orders without ever overselling."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from eventbus.commit_hooks import on_commit_once
from eventbus.outbox import publish
from eventbus.preload import locked
from eventbus.transactions import service_transaction
from inventory.events import ProductChanged, RejectedLine, ReservedLine, StockRejected, StockReleased, StockReserved
from inventory.models import Product, Reservation
from inventory.selectors import AVAILABILITY_TTL, availability_key

logger = logging.getLogger(__name__)

DEMO_PRODUCTS = [
    ("P001", "Espresso beans 1 kg", "75.00", 100),
    ("P002", "Burr grinder", "149.00", 25),
    ("P003", "Milk jug 600 ml", "18.50", 60),
    ("P004", "Pour-over kettle", "59.90", 30),
    ("P005", "Paper filters (100)", "6.00", 200),
    ("P006", "Tamper 58 mm", "32.00", 40),
    ("P007", "Scale with timer", "45.00", 35),
    ("P008", "Cleaning tablets", "12.00", 150),
    ("P009", "Travel mug", "22.00", 80),
    ("P010", "Barista apron", "29.00", 5),
]


class CommitRefused(Exception):
    """A confirmation inventory cannot honour: it holds no stock for the order, or not for those lines."""


@service_transaction
def product_upsert(
    *, sku: str, name: str, price: Decimal, currency: str = "USD", stock_on_hand: int | None = None
) -> Product:
    """Create or change a product; a new name or price is announced (ProductChanged) to other services."""
    product, created = Product.objects.select_for_update().get_or_create(
        sku=sku, defaults={"name": name, "price": price, "currency": currency, "stock_on_hand": stock_on_hand or 0}
    )
    changed = created or (product.name, product.price, product.currency) != (name, price, currency)
    if not created:
        product.name, product.price, product.currency = name, price, currency
        if stock_on_hand is not None:
            product.stock_on_hand = stock_on_hand
    if changed:
        product.revision += 1
    product.save()
    _refresh_availability_on_commit([product.sku])
    if changed:
        publish(
            ProductChanged(
                product_id=product.sku,
                name=product.name,
                price=f"{product.price:.2f}",
                currency=product.currency,
                revision=product.revision,
            )
        )
    return product


def product_seed_demo() -> int:
    """Create the demo products P001..P010 that do not exist yet; return how many were created."""
    created = 0
    for sku, name, price, stock in DEMO_PRODUCTS:
        if not Product.objects.filter(sku=sku).exists():
            product_upsert(sku=sku, name=name, price=Decimal(price), stock_on_hand=stock)
            created += 1
    return created


@service_transaction
def stock_reserve(*, order_id: UUID, lines: list[tuple[str, int]]) -> Reservation:
    """Hold every line for the order or none; announce StockReserved or StockRejected.

    The lines are held in one conditional UPDATE (available >= quantity, per product), so two orders racing for
    the last unit cannot both win, on SQLite and PostgreSQL alike. When a line cannot be held, the lines that
    were are given back in the same transaction."""
    existing = Reservation.objects.filter(order_id=order_id).first()
    if existing is not None:
        return existing
    wanted = _quantities(lines)
    held = Product.objects.move_stock(wanted, if_available=True)
    if held != wanted.keys():
        Product.objects.move_stock({sku: -wanted[sku] for sku in held})
        shortages = [_shortage(sku, wanted[sku]) for sku in sorted(wanted.keys() - held)]
        reason = ", ".join(f"{line.product_id}: {line.reason}" for line in shortages)
        reservation = Reservation.objects.create(
            order_id=order_id, status=Reservation.Status.REJECTED, lines=_as_json(wanted), reason=reason
        )
        publish(StockRejected(order_id=order_id, lines=shortages))
        return reservation
    reservation = Reservation.objects.create(order_id=order_id, status=Reservation.Status.HELD, lines=_as_json(wanted))
    _refresh_availability_on_commit(list(wanted))
    publish(StockReserved(order_id=order_id, lines=_reserved_lines(wanted)))
    return reservation


def _shortage(sku: str, quantity: int) -> RejectedLine:
    """Why `quantity` of `sku` could not be held."""
    product = Product.objects.filter(sku=sku).first()
    available = product.available if product else 0
    reason = "insufficient stock" if product else "unknown product"
    return RejectedLine(product_id=sku, requested=quantity, available=available, reason=reason)


@service_transaction
def stock_release(*, order_id: UUID) -> Reservation:
    """Give back what a cancelled order held (once); a rejected or unknown reservation has nothing to give."""
    reservation = _locked(order_id)
    if reservation is None:
        # The cancellation overtook the order (a retried reservation, a timeout): leave a released
        # record so that the late reservation finds it and holds nothing.
        return Reservation.objects.create(
            order_id=order_id, status=Reservation.Status.RELEASED, lines=[], reason="cancelled before reservation"
        )
    if reservation.status == Reservation.Status.HELD:
        _release(reservation, Reservation.Status.RELEASED)
    return reservation


@service_transaction
def stock_commit(*, order_id: UUID, lines: list[tuple[str, int]]) -> Reservation:
    """A confirmed order's held stock leaves the warehouse (once): on hand and reserved both go down.

    Inventory cannot see the order, so it checks what it can on its own: that it holds stock for the
    order, for exactly the confirmed lines; otherwise it refuses (CommitRefused), also when the hold
    has expired. Whether the order was paid is not among those: a confirmation of a pending order,
    were it forged, is stopped by the event bus's check of its publisher, not here."""
    reservation = _locked(order_id)
    if reservation is not None and reservation.status == Reservation.Status.COMMITTED:
        return reservation
    if reservation is None:
        raise CommitRefused(f"inventory holds no stock for order {order_id}")
    if reservation.status != Reservation.Status.HELD:
        raise CommitRefused(f"the stock of order {order_id} is {reservation.status}, not held")
    held, confirmed = _from_json(reservation.lines), _quantities(lines)
    if held != confirmed:
        raise CommitRefused(
            f"order {order_id} was confirmed with {_describe(confirmed)}, but inventory holds {_describe(held)} for it"
        )
    _settle(reservation, Reservation.Status.COMMITTED, ship=True)
    return reservation


def reservation_expire_stale(*, older_than: timedelta) -> int:
    """Release every reservation held longer than `older_than`, announcing StockReleased; return how many.

    Its order was never decided: the order does not exist (a forged OrderPlaced), or its decision was
    lost. A confirmation arriving after this is refused (see stock_commit)."""
    expired = 0
    stale = Reservation.objects.filter(status=Reservation.Status.HELD, created_at__lt=timezone.now() - older_than)
    for order_id in stale.values_list("order_id", flat=True):
        with transaction.atomic():
            reservation = _locked(order_id)
            if reservation is not None and reservation.status == Reservation.Status.HELD:
                reservation.reason = f"held longer than {older_than} for an order never decided"
                _release(reservation, Reservation.Status.EXPIRED)
                expired += 1
    return expired


def _locked(order_id: UUID) -> Reservation | None:
    return locked(Reservation, order_id=order_id)


def _release(reservation: Reservation, status: str) -> None:
    _settle(reservation, status, ship=False)
    publish(
        StockReleased(order_id=reservation.order_id, lines=_reserved_lines(_from_json(reservation.lines))),
        correlation_id=str(reservation.order_id),
    )


def _settle(reservation: Reservation, status: str, *, ship: bool) -> None:
    """End a held reservation: un-reserve its lines, and with `ship` take them off hand too."""
    Product.objects.move_stock({line["product_id"]: -line["quantity"] for line in reservation.lines}, ship=ship)
    reservation.status = status
    reservation.save(update_fields=["status", "reason", "updated_at"])
    _refresh_availability_on_commit([line["product_id"] for line in reservation.lines])


def _refresh_availability_on_commit(skus: list[str]) -> None:
    on_commit_once(_refresh_availability, skus)  # one refresh for a batch of events, with all their products


def _refresh_availability(skus: set[str]) -> None:
    availability_refresh(skus=sorted(skus))


def availability_refresh(*, skus: list[str]) -> None:
    """Write the committed availability of `skus` to the Redis cache that the products API reads."""
    available = {
        availability_key(sku): on_hand - reserved
        for sku, on_hand, reserved in Product.objects.filter(sku__in=skus).values_list(
            "sku", "stock_on_hand", "stock_reserved"
        )
    }
    try:
        cache.set_many(available, timeout=AVAILABILITY_TTL)
    except RedisError as error:  # the entries expire; the API falls back to the database meanwhile
        logger.warning("availability cache not updated for %s: %s", skus, error)


def _quantities(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Quantities per product, a product named on several lines counted once."""
    wanted: dict[str, int] = {}
    for sku, quantity in lines:
        wanted[sku] = wanted.get(sku, 0) + quantity
    return wanted


def _describe(quantities: dict[str, int]) -> str:
    return ", ".join(f"{sku} x {qty}" for sku, qty in sorted(quantities.items())) or "nothing"


def _as_json(wanted: dict[str, int]) -> list[dict[str, object]]:
    return [{"product_id": sku, "quantity": qty} for sku, qty in sorted(wanted.items())]


def _from_json(lines: list[dict[str, object]]) -> dict[str, int]:
    return {str(line["product_id"]): int(line["quantity"]) for line in lines}  # type: ignore[call-overload]


def _reserved_lines(wanted: dict[str, int]) -> list[ReservedLine]:
    return [ReservedLine(product_id=sku, quantity=qty) for sku, qty in sorted(wanted.items())]
