from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class EventbusConfig(AppConfig):
    name = "eventbus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery import current_app

        from eventbus import retention, telemetry, worker  # noqa: F401  (a system check; Celery signals)
        from eventbus.handling import register_tasks
        from eventbus.topology import add_task_queues

        # Contracts and subscriptions register themselves on import; the handlers' tasks and the services'
        # task queues follow from them.
        autodiscover_modules("events", "handlers")
        register_tasks()
        add_task_queues(current_app)
