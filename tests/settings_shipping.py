"""The test settings plus a throwaway subscribing service, tests/shipping: one line (tests/test_new_subscriber.py)."""

from orderproj.settings.test import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.shipping"]  # noqa: F405
