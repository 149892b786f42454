"""A bare Celery app with one no-op task, for the baseline: `celery -A bench.noop worker -Q bench.noop`.

Same durability as the pipeline's task queues (persistent messages on a quorum queue, publisher
confirms, late acks, JSON), none of its work: no Django, no result backend, no task events.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

QUEUE = "bench.noop"

# Not the current app: the bench process also uses the pipeline's app, and eventbus reads current_app.
app = Celery("bench_noop", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL"),
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    accept_content=["json"],
    task_serializer="json",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=int(os.environ.get("CELERY_WORKER_PREFETCH_MULTIPLIER", "4")),
    worker_detect_quorum_queues=True,
    task_queues=[
        Queue(
            QUEUE,
            Exchange(QUEUE, type="direct", durable=True),
            routing_key=QUEUE,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )
    ],
    task_default_queue=QUEUE,
)


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing: what is left is Celery's and the broker's own cost per task."""
