"""`make run`: debug on, a fixed development secret, everything on 127.0.0.1."""

import os

from orderproj.settings.base import *  # noqa: F403

DEBUG = env_bool("DJANGO_DEBUG", True)  # noqa: F405
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "local-development-only-not-secret"
# Without EVENTBUS_SEAL_KEY, the stack's own key, made on first use, readable by its owner only.
EVENTBUS_SEAL_KEY_FILE = RUN_DIR / "seal-key"  # noqa: F405
