"""Production: every secret comes from the environment, with no default."""

import os

from django.core.exceptions import ImproperlyConfigured

from orderproj.settings.base import *  # noqa: F403


def required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ImproperlyConfigured(f"{name} must be set in production")
    return value


SECRET_KEY = required("DJANGO_SECRET_KEY")
DEBUG = env_bool("DJANGO_DEBUG", False)  # noqa: F405
ALLOWED_HOSTS = required("DJANGO_ALLOWED_HOSTS").split(",")
DATABASES = {"default": dj_database_url.parse(required("DATABASE_URL"), **DATABASE_CONNECTION)}  # noqa: F405
CELERY_BROKER_URL = required("CELERY_BROKER_URL")
REDIS_URL = required("REDIS_URL")
CACHES["default"]["LOCATION"] = REDIS_URL  # noqa: F405
RABBITMQ_MANAGEMENT_URL = required("RABBITMQ_MANAGEMENT_URL")
EVENTBUS_SEAL_KEY = required("EVENTBUS_SEAL_KEY")

# Static files (the admin's CSS and JS) served by the app itself, compressed and cache-busted.
WHITENOISE = "whitenoise.middleware.WhiteNoiseMiddleware"
MIDDLEWARE = [*MIDDLEWARE]  # noqa: F405
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, WHITENOISE)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)  # noqa: F405
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 60 * 60 * 24 * 30)  # noqa: F405
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]
