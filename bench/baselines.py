"""What the pipeline is compared with, on the same broker and with the same durability: raw confirmed
publishes, the outbox relay on its own, and bare Celery no-op tasks.

Imported once Django is set up.
"""

from __future__ import annotations

import time
import uuid

from celery import current_app
from django.db import transaction
from kombu import Connection

from bench.procstats import cpu_between, self_cpu_seconds
from bench.stack import BenchStack
from bench.workload import Progress
from eventbus.envelope import CONTENT_TYPE, new_event
from eventbus.models import OutboxMessage
from eventbus.outbox import publish
from eventbus.publisher import ConfirmingPublisher, Outgoing, batch_connection
from eventbus.relay import sweep
from eventbus.sealing import seal
from eventbus.topology import declare_all
from orders.events import OrderItem, OrderPlaced

# OrderPlaced goes to the orders exchange and from there to two quorum queues, inventory's and payments'.
EXCHANGE, ROUTING_KEY = "orders.events", "order.placed"
FANOUT_QUEUES = ["inventory.events", "payments.events"]


def order_placed() -> OrderPlaced:
    """An OrderPlaced of typical size: two items and a sealed payment token."""
    return OrderPlaced(
        order_id=uuid.uuid4(),
        items=[OrderItem(product_id="B001", quantity=2), OrderItem(product_id="B002", quantity=1)],
        total_amount="161.00",
        currency="USD",
        timestamp="2025-01-01T12:00:00Z",
        payment_token=seal("tok_visa"),
    )


def declare_topology() -> None:
    with batch_connection(current_app) as connection:
        declare_all(connection, current_app)


def raw_publishes(stack: BenchStack, *, seconds: float, batch_messages: int) -> dict:
    """kombu publishes of an OrderPlaced body to the orders exchange (two quorum queues), persistent:
    first one confirm awaited per message, then many messages per wait (ConfirmingPublisher's way)."""
    body = new_event(order_placed()).to_json()
    with Connection(stack.config.broker_url, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            producer.publish(
                body,
                exchange=EXCHANGE,
                routing_key=ROUTING_KEY,
                delivery_mode=2,
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                message_id=str(uuid.uuid4()),
                retry=False,
            )
            count += 1
        per_message = count / (time.perf_counter() - started)
    stack.purge(FANOUT_QUEUES)  # each run starts on empty queues, as the relay's does
    with batch_connection(current_app) as connection:
        publisher = ConfirmingPublisher(connection)
        started = time.perf_counter()
        for _ in range(0, batch_messages, 500):
            publisher.publish_batch(
                Outgoing(EXCHANGE, ROUTING_KEY, body, CONTENT_TYPE, str(uuid.uuid4())) for _ in range(500)
            )
        batched = (batch_messages // 500 * 500) / (time.perf_counter() - started)
    stack.purge(FANOUT_QUEUES)
    return {
        "body_bytes": len(body),
        "confirm_each_per_s": per_message,
        "confirm_each_messages": count,
        "batched_confirms_per_s": batched,
        "batched_messages": batch_messages // 500 * 500,
        "batch_size": 500,
    }


def relay_alone(stack: BenchStack, rows: int) -> dict:
    """Fill the outbox with `rows` OrderPlaced events through eventbus.outbox.publish (500 per
    transaction), then time eventbus.relay.sweep publishing them all, confirmed and marked sent."""
    progress = Progress("relay")
    started = time.perf_counter()
    for start in range(0, rows, 500):
        with transaction.atomic():
            for _ in range(min(500, rows - start)):
                publish(order_placed())
        if progress.due():
            progress.say(f"outbox filled with {start + 500}/{rows} rows")
    fill_s = time.perf_counter() - started
    progress.say(f"{rows} rows written in {fill_s:.1f}s; relaying")
    before, cpu0 = stack.sample(), self_cpu_seconds()
    started = time.perf_counter()
    sent = sweep()
    elapsed = time.perf_counter() - started
    after = stack.sample()
    left = OutboxMessage.objects.filter(sent_at__isnull=True).count()
    stack.purge(FANOUT_QUEUES)
    OutboxMessage.objects.all().delete()
    return {
        "rows": rows,
        "sent": sent,
        "left_pending": left,
        "events_per_s": sent / elapsed,
        "elapsed_s": elapsed,
        "outbox_writes_per_s": rows / fill_s,
        "relay_cpu_s": self_cpu_seconds() - cpu0,
        "rabbitmq_cpu_s": after["rabbitmq"].cpu_s - before["rabbitmq"].cpu_s,
    }


def bare_celery(stack: BenchStack, *, tasks: int, workers: int, concurrency: int) -> dict:
    """No-op tasks through Celery with the pipeline's worker count and concurrency: the queue is filled
    first, then the workers start; tasks/s is the drain rate while 90% to 10% of the tasks are left."""
    from bench.noop import QUEUE, app

    progress = Progress("celery no-op")
    started = time.perf_counter()
    with app.connection_for_write() as connection:  # a connection of this run's own: the bench runs it twice
        for i in range(tasks):
            app.send_task("bench.noop", queue=QUEUE, connection=connection)
            if progress.due():
                progress.say(f"queued {i + 1}/{tasks}")
    send_per_s = tasks / (time.perf_counter() - started)
    progress.say(f"{tasks} tasks queued ({send_per_s:.0f}/s, a confirm each); starting {workers} workers")
    names = stack.start_noop_workers(workers, concurrency)
    window: dict[str, tuple[float, int, dict]] = {}
    deadline = time.monotonic() + 300
    try:
        while True:
            ready = stack.queue_state(QUEUE)[0]
            now = time.perf_counter()
            if "start" not in window and ready <= tasks * 0.9:
                window["start"] = (now, ready, stack.sample())
            if "end" not in window and ready <= tasks * 0.1:
                window["end"] = (now, ready, stack.sample())
                break
            stack.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare Celery: {ready} of {tasks} tasks still queued after 300s")
            if progress.due():
                progress.say(f"{ready} tasks left")
            time.sleep(0.05)
    finally:
        stack.stop_procs(names)
    (t0, ready0, before), (t1, ready1, after) = window["start"], window["end"]
    done = ready0 - ready1
    cpu = {name: value for name, value in cpu_between(before, after).items() if name in (*names, "rabbitmq")}
    with Connection(stack.config.broker_url) as connection:
        connection.default_channel.queue_delete(QUEUE)
    return {
        "tasks": tasks,
        "workers": workers,
        "concurrency": concurrency,
        "tasks_per_s": done / (t1 - t0),
        "window_tasks": done,
        "send_task_confirm_each_per_s": send_per_s,
        "cpu_s_in_window": {name: round(value, 2) for name, value in cpu.items()},
        "cpu_ms_per_task": 1000 * sum(cpu.values()) / done,
    }
