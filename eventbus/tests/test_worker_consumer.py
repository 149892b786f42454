"""The worker's consumer: task events without a publisher confirm each, task messages with one."""

from types import SimpleNamespace

from celery.worker.consumer.events import Events

from eventbus.worker import Consumer
from orderproj.celery import app


def test_the_worker_runs_the_eventbus_consumer():
    assert app.conf.worker_consumer == "eventbus.worker:Consumer"


def test_task_events_go_out_unconfirmed_and_task_messages_confirmed():
    consumer = SimpleNamespace(app=app, ensure_connected=lambda connection: connection)
    events = Consumer.connection_for_write(consumer)
    tasks = app.connection_for_write()
    try:
        assert events.transport_options["confirm_publish"] is False
        assert tasks.transport_options["confirm_publish"] is True
        assert events.as_uri() == tasks.as_uri()  # the same broker and user, only the confirms differ
    finally:
        events.release()
        tasks.release()


def test_celerys_events_step_is_what_takes_that_connection():
    """The override holds only while Celery's Events step opens the dispatcher's connection with it."""
    opened = []
    consumer = SimpleNamespace(
        connection_for_write=lambda **kwargs: opened.append(kwargs) or None,
        amqheartbeat=0,
        hub=None,
        event_dispatcher=None,
        hostname="orders@test",
        app=SimpleNamespace(
            events=SimpleNamespace(Dispatcher=lambda connection, **_: SimpleNamespace(connection=connection))
        ),
    )
    step = Events(consumer, task_events=True)
    step.start(consumer)
    assert opened == [{"heartbeat": 0}]
