from django.apps import AppConfig


class EventbusConfig(AppConfig):
    name = "eventbus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from eventbus import worker  # noqa: F401  (connects the worker start-up signal)
