"""The order saga written the plain Celery way, the baseline `make bench` measures the pipeline against.

No outbox, inbox or events: placing an order starts two tasks on commit (`delay_on_commit`), each step's
task starts the next one on commit, and a task is idempotent by checking the state it finds. Durability as
the pipeline's task queues have it: quorum queues, publisher confirms, late acks, reject on worker lost,
django-db results and task events (the project's Celery settings, bench.plain.app).
"""

# The queue of each service's plain tasks, named `plain.<service>.<step>` and routed by that prefix.
QUEUE_NAMES = ("plain.orders", "plain.inventory", "plain.payments")
