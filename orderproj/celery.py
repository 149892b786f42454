"""The Celery application, configured from Django settings under the CELERY_ namespace."""

import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orderproj.settings.local")

app = Celery("orderproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# By name: the step imports Django models, which load only once the worker has set Django up.
app.steps["consumer"].add("eventbus.intake:EventIntake")


@setup_logging.connect
def use_django_logging(**_: object) -> None:
    """Route Celery's logging through Django's LOGGING instead of Celery's own set-up."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
