"""`make run`: debug on, a fixed development secret, everything on 127.0.0.1."""

import os

from eventbus.passwords import PasswordFile
from orderproj.settings.base import *  # noqa: F403

DEBUG = env_bool("DJANGO_DEBUG", True)  # noqa: F405
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "local-development-only-not-secret"
# Without EVENTBUS_SEAL_KEY, the stack's own key, made on first use, readable by its owner only.
EVENTBUS_SEAL_KEY_FILE = RUN_DIR / "seal-key"  # noqa: F405
# The stack's broker users' passwords, made by devstack. A command run by hand in this checkout reaches its
# broker as ops; devstack gives each process it starts a URL of its own.
BROKER_PASSWORD_FILE = RUN_DIR / "broker-credentials.json"  # noqa: F405
if "CELERY_BROKER_URL" not in os.environ and BROKER_PASSWORD_FILE.exists():
    CELERY_BROKER_URL = f"amqp://ops:{PasswordFile(BROKER_PASSWORD_FILE).password('ops')}@127.0.0.1:{RABBITMQ_PORT}//"  # noqa: F405
