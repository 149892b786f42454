"""WSGI entry point (gunicorn, and runserver through WSGI_APPLICATION)."""

import os

from django.core.wsgi import get_wsgi_application

from eventbus import telemetry

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orderproj.settings.local")

telemetry.configure("web")  # before the application: the Django instrumentation adds its middleware
application = get_wsgi_application()
