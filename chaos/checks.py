"""What must hold once the pipeline is quiet: nothing lost, no effect twice, poison filed, queues drained."""

from __future__ import annotations

from collections import Counter, defaultdict
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

from django.db import DatabaseError, connection
from django.db.models import Count
from django_celery_results.models import TaskResult

from chaos.faults import POISON_QUEUES, Fault, Poison
from chaos.kinds import DATABASE_FAULTS
from chaos.stack import ARCHIVE_QUEUES
from eventbus.models import DeadLetter, OutboxMessage
from eventbus.outbox_claims import outbox_shares
from inventory.models import Product, Reservation
from orders.models import Order, OrderLine
from payments.models import Payment

CONFIRMED, CANCELLED = Order.Status.CONFIRMED, Order.Status.CANCELLED
# Most events one order may cause of each type, whatever was delivered twice.
AT_MOST_ONCE = (
    "inventory.StockReserved.v1",
    "inventory.StockRejected.v1",
    "inventory.StockReleased.v1",
    "payments.PaymentAuthorized.v1",
    "payments.PaymentDeclined.v1",
    "payments.PaymentVoided.v1",
)
# Longest a refused `order_place` may have run before its error: the SQLite busy timeout, and some.
REFUSAL_WINDOW = timedelta(seconds=60)


def reconnect() -> None:
    """Drop this thread's database connection after an error, so the next query opens a fresh one: a
    connection opened while the database refused writes (SQLite then opens read only) would stay so."""
    with suppress(DatabaseError):
        connection.close()


@dataclass
class Progress:
    """How far the stream has got, read cheaply while it runs."""

    final: int
    confirmed: int
    pending: int
    unsettled: int
    unsent: int

    @classmethod
    def read(cls, accepted: int) -> Progress | None:
        """The counts now; None while the database is away (a fault), the run going on meanwhile."""
        try:
            statuses = Counter(dict(Order.objects.order_by().values_list("status").annotate(n=Count("id"))))
            settling = Payment.objects.filter(status=Payment.Status.AUTHORIZED).count()
            held = Reservation.objects.filter(status=Reservation.Status.HELD).count()
            missing = max(0, accepted - Payment.objects.count())
            unsent = OutboxMessage.objects.filter(sent_at__isnull=True).count()
        except DatabaseError:
            reconnect()
            return None
        return cls(
            final=statuses[CONFIRMED] + statuses[CANCELLED],
            confirmed=statuses[CONFIRMED],
            pending=statuses[Order.Status.PENDING],
            unsettled=settling + held + missing,
            unsent=unsent,
        )

    @property
    def quiet(self) -> bool:
        return self.pending == 0 and self.unsettled == 0 and self.unsent == 0


@dataclass
class Verdict:
    accepted: int = 0
    refused: int = 0
    statuses: Counter = field(default_factory=Counter)
    cancel_reasons: Counter = field(default_factory=Counter)
    uncertain: int = 0
    lost: set = field(default_factory=set)
    duplicated: set = field(default_factory=set)
    wrong: set = field(default_factory=set)
    recovered: int = 0
    absorbed: int = 0
    dead_letters: Counter = field(default_factory=Counter)
    poison_expected: int = 0
    poison_missing: list[str] = field(default_factory=list)
    poison_via_broker: int = 0
    filed_twice: int = 0
    unexpected_dead_letters: int = 0
    markers_found: list[str] = field(default_factory=list)
    phantoms: int = 0
    unsent: int = 0
    blocked: int = 0
    shares: dict[str, int] = field(default_factory=dict)
    published_twice: int = 0
    republished_unexplained: int = 0
    relays_restarted: int = 0
    queues_checked: int = 0
    queues_not_drained: list[str] = field(default_factory=list)
    archived: int = 0
    failed_faults: int = 0
    examples: list[str] = field(default_factory=list)

    def flag(self, bucket: set, key: object, message: str) -> None:
        bucket.add(key)
        if len(self.examples) < 12:
            self.examples.append(message)

    @property
    def republished(self) -> int:
        """Rows published again with no failure recorded, where no relay was killed to explain it: two
        relays held one row, or a lease ran out under a live relay."""
        return self.republished_unexplained if self.relays_restarted == 0 else 0

    @property
    def violations(self) -> int:
        return (len(self.lost) + len(self.duplicated) + len(self.wrong) + len(self.poison_missing)
                + self.unexpected_dead_letters + len(self.markers_found) + self.phantoms + self.unsent
                + len(self.queues_not_drained) + self.failed_faults + self.republished)  # fmt: skip


def check(
    *,
    accepted: list[UUID],
    refused: list[datetime],
    stock: dict[str, int],
    faults: list[Fault],
    poison: list[Poison],
    markers: list[Path],
    queues: list[dict],
    relays_restarted: int,
) -> Verdict:
    """Read the quiet database and the queues and judge them; `refused` holds when each refused order
    failed, `relays_restarted` how many times a relay was killed or crashed and then restarted."""
    verdict = Verdict(accepted=len(accepted), refused=len(refused), failed_faults=sum(f.failed for f in faults))
    orders = {order.id: order for order in Order.objects.all()}
    unknown = [orders[order_id] for order_id in orders.keys() - set(accepted)]
    uncertain = _committed_though_refused(unknown, refused)
    verdict.uncertain, verdict.phantoms = len(uncertain), len(unknown) - len(uncertain)
    accepted = [*accepted, *uncertain]
    events: dict[str, Counter] = defaultdict(Counter)
    for correlation, event_type, n in (
        OutboxMessage.objects.values_list("correlation_id", "event_type").annotate(n=Count("id")).order_by()
    ):
        events[correlation][event_type] = n
    payments = {p.order_id: p for p in Payment.objects.all()}
    reservations = {r.order_id: r for r in Reservation.objects.all()}
    for order_id in accepted:
        order = orders.get(order_id)
        if order is None:
            verdict.flag(verdict.lost, order_id, f"lost: order {order_id} is missing")
            continue
        if order.status == Order.Status.PENDING:
            legs = f"stock leg {order.stock_leg}, payment leg {order.payment_leg}"
            verdict.flag(verdict.lost, order_id, f"lost: order {order_id} is pending ({legs})")
            continue
        verdict.statuses[order.status] += 1
        if order.status == CANCELLED:  # "stock: ...; payment: ..." -> "payment and stock"
            legs = {part.split(":")[0] for part in order.cancel_reason.split("; ")}
            verdict.cancel_reasons[" and ".join(sorted(legs))] += 1
        _check_order(verdict, order, events[str(order_id)], payments.get(order_id), reservations.get(order_id))
        if _in_flight_during_a_fault(order, payments.get(order_id), reservations.get(order_id), faults):
            verdict.recovered += 1
    _check_stock(verdict, stock, orders)
    # The result of a (handler, event) task keeps its latest run: "duplicate" when the inbox absorbed it.
    verdict.absorbed = TaskResult.objects.filter(result__contains='"outcome": "duplicate"').count()
    _check_dead_letters(verdict, poison, faults)
    verdict.markers_found = [str(marker) for marker in markers if marker.exists()]
    verdict.unsent = OutboxMessage.objects.filter(sent_at__isnull=True).count()
    verdict.blocked = OutboxMessage.objects.filter(sent_at__isnull=True, blocked_at__isnull=False).count()
    _check_publishing(verdict, relays_restarted)
    verdict.queues_not_drained = undrained(queues)
    verdict.queues_checked = sum(q["name"] not in ARCHIVE_QUEUES for q in queues)
    verdict.archived = sum(q.get("messages", 0) for q in queues if q["name"] in ARCHIVE_QUEUES)
    return verdict


def _committed_though_refused(unknown: list[Order], refused: list[datetime]) -> list[UUID]:
    """Orders the placing loop did not see accepted, each matched to a refusal that came after it was
    created: the database committed it, then the answer was lost (it went down in between)."""
    left = sorted(refused)
    matched = []
    for order in sorted(unknown, key=lambda o: o.created_at):
        refusal = next((t for t in left if order.created_at <= t <= order.created_at + REFUSAL_WINDOW), None)
        if refusal is not None:
            left.remove(refusal)
            matched.append(order.id)
    return matched


def _check_publishing(verdict: Verdict, relays_restarted: int) -> None:
    """Each relay's share of the sent rows, and the rows it took more than one try to publish."""
    sent = OutboxMessage.objects.filter(sent_at__isnull=False)
    verdict.shares = outbox_shares()
    retried = sent.filter(publish_attempts__gt=1)
    verdict.published_twice = retried.count()
    # A failed try records its error: publishing again after it is at-least-once delivery at work.
    verdict.republished_unexplained = retried.filter(last_error="").count()
    verdict.relays_restarted = relays_restarted
    if verdict.republished and len(verdict.examples) < 12:
        ids = list(retried.filter(last_error="").values_list("id", "publish_attempts", "sent_by")[:5])
        verdict.examples.append(f"{verdict.republished} outbox row(s) published again with no relay killed: {ids}")


def _check_order(verdict: Verdict, order: Order, events: Counter, payment: Payment | None, reservation) -> None:
    key = order.id
    if events["orders.OrderPlaced.v1"] != 1:
        verdict.flag(verdict.duplicated if events["orders.OrderPlaced.v1"] > 1 else verdict.wrong, key,
                     f"order {key}: {events['orders.OrderPlaced.v1']} OrderPlaced events")  # fmt: skip
    decisions = events["orders.OrderConfirmed.v1"] + events["orders.OrderCancelled.v1"]
    if decisions != 1:
        verdict.flag(verdict.duplicated if decisions > 1 else verdict.wrong, key, f"order {key}: {decisions} decisions")
    for event_type in AT_MOST_ONCE:
        if events[event_type] > 1:
            verdict.flag(verdict.duplicated, key, f"order {key}: {events[event_type]} x {event_type}")
    captures = events["payments.PaymentCaptured.v1"]
    if captures > 1 or (order.status == CANCELLED and captures):
        verdict.flag(verdict.duplicated, key, f"order {key} ({order.status}): {captures} capture(s)")
    elif order.status == CONFIRMED and captures == 0:
        verdict.flag(verdict.wrong, key, f"order {key} confirmed but never captured")
    if payment is None:
        verdict.flag(verdict.wrong, key, f"order {key} ({order.status}): no payment record")
    elif order.status == CONFIRMED and payment.status != Payment.Status.CAPTURED:
        verdict.flag(verdict.wrong, key, f"order {key} confirmed, payment {payment.status}")
    elif order.status == CANCELLED and payment.status not in (Payment.Status.VOIDED, Payment.Status.DECLINED):
        bucket = verdict.duplicated if payment.status == Payment.Status.CAPTURED else verdict.wrong
        verdict.flag(bucket, key, f"order {key} cancelled, payment {payment.status}")
    wanted = {CONFIRMED: {Reservation.Status.COMMITTED},
              CANCELLED: {Reservation.Status.RELEASED, Reservation.Status.REJECTED}}[order.status]  # fmt: skip
    if reservation is None or reservation.status not in wanted:
        status = reservation.status if reservation else "missing"
        verdict.flag(verdict.wrong, key, f"order {key} {order.status}, reservation {status}")


def _in_flight_during_a_fault(order: Order, payment: Payment | None, reservation, faults: list[Fault]) -> bool:
    """Whether a fault happened between the order's placement and its last effect."""
    effects = (order.decided_at, payment and payment.updated_at, reservation and reservation.updated_at)
    done = max(t for t in effects if t)
    return any(fault.started <= done and order.created_at <= fault.ended for fault in faults)


def _check_stock(verdict: Verdict, stock: dict[str, int], orders: dict) -> None:
    shipped: Counter = Counter()
    confirmed = [order_id for order_id, order in orders.items() if order.status == CONFIRMED]
    for sku, quantity in OrderLine.objects.filter(order_id__in=confirmed).values_list("product_id", "quantity"):
        shipped[sku] += quantity
    for product in Product.objects.filter(sku__in=stock):
        expected = stock[product.sku] - shipped[product.sku]
        if product.stock_on_hand != expected:
            bucket = verdict.duplicated if product.stock_on_hand < expected else verdict.wrong
            verdict.flag(bucket, product.sku, f"{product.sku}: on hand {product.stock_on_hand}, expected {expected}")
        if product.stock_reserved != 0:
            verdict.flag(verdict.wrong, product.sku, f"{product.sku}: {product.stock_reserved} still reserved at quiet")


def _check_dead_letters(verdict: Verdict, poison: list[Poison], faults: list[Fault]) -> None:
    """Each poison message filed once per queue that took it: as poison, or through the broker's
    dead-letter queue when the database refused the consumer's write after it was published."""
    letters = list(DeadLetter.objects.values_list("reason", "queue", "body"))
    verdict.dead_letters = Counter(reason for reason, _, _ in letters)
    verdict.poison_expected = len(poison) * len(POISON_QUEUES)
    refusals_ended = [fault.ended for fault in faults if fault.kind in DATABASE_FAULTS]
    matched = set()
    for item in poison:
        for queue in POISON_QUEUES:
            hits = [i for i, (reason, q, body) in enumerate(letters) if q == queue and item.token in body]
            reasons = {letters[i][0] for i in hits}
            if DeadLetter.Reason.POISON not in reasons:
                if DeadLetter.Reason.BROKER in reasons and any(end >= item.published for end in refusals_ended):
                    verdict.poison_via_broker += 1
                else:
                    verdict.poison_missing.append(f"{item.what} ({item.token}) not filed as poison from {queue}")
            verdict.filed_twice += max(0, len(hits) - 1)
            matched.update(hits)
    verdict.unexpected_dead_letters = len(letters) - len(matched)
    for reason, queue, body in (letter for i, letter in enumerate(letters) if i not in matched):
        if len(verdict.examples) < 12:
            verdict.examples.append(f"unexpected dead letter ({reason}) from {queue}: {body[:120]}")


def undrained(queues: list[dict]) -> list[str]:
    """Queues (but the archive of unsubscribed events) still holding messages, ready or unacknowledged."""
    return [
        f"{q['name']} ({q.get('messages', 0)} messages, {q.get('messages_unacknowledged', 0)} unacked)"
        for q in queues
        if q["name"] not in ARCHIVE_QUEUES and (q.get("messages", 0) or q.get("messages_unacknowledged", 0))
    ]
