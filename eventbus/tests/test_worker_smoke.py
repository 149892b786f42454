"""A real message through the real broker to a real worker process, and its result in the database."""

import pytest
from django_celery_results.models import TaskResult

from eventbus.tasks import ping

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_task_runs_on_a_worker_process_and_its_result_is_recorded(workers):
    # Given the workers of every service, when a task is sent through RabbitMQ
    result = ping.delay("hello")

    # Then a worker process runs it and the result reaches the django-db backend
    reply = result.get(timeout=30)
    assert reply["reply"] == "hello"
    # (housekeeping tasks such as this one run on any service's worker)
    worker = reply["worker"].split("@", 1)[0]
    assert worker in {f"{service}-test" for service in ("orders", "inventory", "payments")}
    row = TaskResult.objects.get(task_id=result.id)
    assert row.status == "SUCCESS"
    assert row.task_name == "eventbus.ping"
    assert row.worker == reply["worker"]
