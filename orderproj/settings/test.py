"""`make test`: base, with what the suite needs set here; broker and database stay real."""

import os

from orderproj.settings.base import *  # noqa: F403

SECRET_KEY = "test-only-not-secret"  # noqa: S105
# The web process the browser tests start is runserver, which serves the static files (the admin's, Swagger
# UI's) only with DEBUG on. The test process itself runs with DEBUG off: pytest-django turns it off.
DEBUG = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES["default"]["KEY_PREFIX"] = os.environ.get("CACHE_KEY_PREFIX", f"test-{os.getpid()}")  # noqa: F405

# The stack's files, which devstack makes and every process of a run shares: the seal key (no
# EVENTBUS_SEAL_KEY needed) and the broker users' passwords, the administrator's included.
EVENTBUS_SEAL_KEY_FILE = RUN_DIR / "seal-key"  # noqa: F405
BROKER_PASSWORD_FILE = RUN_DIR / "broker-credentials.json"  # noqa: F405

# A file, not SQLite's in-memory default: worker processes started by the tests open it too.
TEST_RUN_ID = os.environ.get("TEST_RUN_ID", f"{os.getpid()}")
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(RUN_DIR / f"test-{TEST_RUN_ID}.sqlite3")}  # noqa: F405

# The suite posts many orders and logs in many times from one address: no API throttles and no
# admin lockouts here; their own tests turn them on with override_settings.
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"anon": None, "user": None}}  # noqa: F405
AXES_ENABLED = False
