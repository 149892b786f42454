"""Worker start-up: declare the topology before the consumer binds queues to delayed delivery."""

from typing import Any

from celery.signals import worker_init

from eventbus.topology import declare_all


@worker_init.connect
def declare_topology(sender: Any = None, **_: Any) -> None:
    app = sender.app
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=30)
        declare_all(connection, app)
