"""Order pipeline project: exports the Celery app so `celery -A orderproj` finds it."""

from orderproj.celery import app as celery_app

__all__ = ("celery_app",)
