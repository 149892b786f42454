"""Settings shared by every environment. The environment is read here and nowhere else."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent
RUN_DIR = Path(os.environ.get("RUN_DIR", BASE_DIR / ".run"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_rate(name: str, default: str) -> str | None:
    """A request rate such as `120/min` (per s, min, hour or day); `off` (or empty) means no limit."""
    text = os.environ.get(name, default).strip().lower()
    if text in {"", "off"}:
        return None
    if not re.fullmatch(r"[1-9]\d*/(s|sec|second|m|min|minute|h|hour|d|day)", text):
        raise ImproperlyConfigured(f"{name}={text!r}: expected a rate such as 120/min, 10/s or 5000/day, or off")
    return text


def env_prefixed(prefix: str) -> dict[str, str]:
    """Every non-empty variable named `<prefix><NAME>`, by `name` in lower case."""
    return {
        key.removeprefix(prefix).lower(): value for key, value in os.environ.items() if key.startswith(prefix) and value
    }


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def env_duration(name: str, default: str) -> timedelta:
    """A positive duration such as `14d`, `12h`, `30m` or `90s` (a bare number counts seconds)."""
    text = os.environ.get(name, default).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.lower())
    if not match or float(match[1]) <= 0:
        raise ImproperlyConfigured(f"{name}={text!r}: expected a positive duration such as 14d, 12h, 30m or 90s")
    return timedelta(seconds=float(match[1]) * DURATION_UNITS[match[2] or "s"])


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, pinned in requirements.txt, served as the site's own
    "django_celery_results",
    "django_celery_beat",
    "axes",
    "eventbus",
    "orders",
    "inventory",
    "payments",
]

MIDDLEWARE = [
    "orderproj.errors.JsonApiErrors",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "eventbus.tracing.RequestTraceContext",  # a `traceparent` header goes on into the events, tracing on or off
]
# Debug pages and error reports hide connection URLs, the database's path and secret-named variables.
DEFAULT_EXCEPTION_REPORTER_FILTER = "orderproj.errors.SecretsHidingFilter"

ROOT_URLCONF = "orderproj.urls"
WSGI_APPLICATION = "orderproj.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: SQLite by default (WAL, busy timeout, immediate transactions), PostgreSQL by URL.
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{RUN_DIR / 'db.sqlite3'}")
# Workers run thousands of short tasks: a connection per task cost ~5 % of their CPU (measured by
# `make bench`), so connections are kept, and checked before reuse (see CELERY_DB_REUSE_MAX too).
DATABASE_CONNECTION = {"conn_max_age": env_int("DB_CONN_MAX_AGE", 60), "conn_health_checks": True}
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, **DATABASE_CONNECTION)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # Workers, relay and web write concurrently: WAL lets readers run beside the writer,
        # IMMEDIATE takes the write lock up front so two writers queue instead of deadlocking.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Django's backend, with writers queueing on a file lock rather than SQLite's sleeping busy handler.
    DATABASES["default"]["ENGINE"] = "orderproj.db.sqlite3"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Redis: availability cache and the outbox relay's wake-up channel.
REDIS_URL = os.environ.get("REDIS_URL", f"redis://127.0.0.1:{env_int('REDIS_PORT', 6379)}/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "orderpipe"),
        # Callers fall back when Redis is away (API throttles, availability), so the timeouts are short:
        # with Redis hung (SIGSTOP) every handler that refreshes the availability cache waits them out
        # (seen with 2 s: 29 s per order).
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
}

# --- RabbitMQ and Celery.
RABBITMQ_PORT = env_int("RABBITMQ_PORT", 5672)
RABBITMQ_MANAGEMENT_PORT = env_int("RABBITMQ_MANAGEMENT_PORT", 15672)
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}//")
RABBITMQ_MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", f"http://127.0.0.1:{RABBITMQ_MANAGEMENT_PORT}")
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")  # bearer token for Prometheus scrapes of /metrics
FLOWER_URL = os.environ.get("FLOWER_URL", f"http://127.0.0.1:{env_int('FLOWER_PORT', 5555)}")
# The order page links its trace there, `{trace_id}` replaced: Jaeger's UI is http://localhost:16686/trace/{trace_id}.
TRACE_URL_TEMPLATE = os.environ.get("TRACE_URL_TEMPLATE", "")

# --- Tracing (OpenTelemetry; eventbus.telemetry). The exporters, comma-separated: otlp (OTLP over HTTP to
# OTEL_EXPORTER_OTLP_ENDPOINT), console, or none (the default: off, nothing loaded). The SDK reads its other
# OTEL_* variables itself; OTEL_SERVICE_NAME overrides the name each process gives itself (web, relay, ...).
OTEL_TRACES_EXPORTER = tuple(
    sorted({name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "none").lower().split(",")} - {"", "none"})
)
if set(OTEL_TRACES_EXPORTER) - {"otlp", "console"}:
    raise ImproperlyConfigured(
        f"OTEL_TRACES_EXPORTER={os.environ['OTEL_TRACES_EXPORTER']!r}: choose otlp, console, otlp,console or none"
    )

CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_EVENT_SERIALIZER = "json"
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# django-celery-results' rows ("django-db"), stored in one statement on PostgreSQL (eventbus/results.py).
CELERY_RESULT_BACKEND = "eventbus.results:DatabaseBackend"
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = None  # eventbus.retention deletes task results, in batches, not celery.backend_cleanup
# Every handler is idempotent (inbox), so a message is acknowledged only once its work is done
# and goes back to the queue when the process running it dies.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 4)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 30)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 60)
# A STARTED row per task doubled the result backend's writes, its largest cost in `make bench`;
# Flower still shows started tasks from the task events.
CELERY_TASK_TRACK_STARTED = False
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_SEND_TASK_EVENTS = True
# Celery's consumer, sending the task events without a publisher confirm each (eventbus.worker.Consumer).
CELERY_WORKER_CONSUMER = "eventbus.worker:Consumer"
# A worker's remote-control queue (`<node>.celery.pidbox`, what Flower's inspect calls use) is exclusive by
# default. After a RabbitMQ node restart in a cluster, the queue of the worker's dead connection can outlive
# it for a moment, and the reconnecting worker then stopped with RESOURCE_LOCKED (seen in `make chaos` on
# three nodes). Not exclusive, the worker declares it again; x-expires still removes it once unused.
CELERY_CONTROL_QUEUE_EXCLUSIVE = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_TASK_PUBLISH_RETRY = True
# Celery's Django fixup closes the database connection around every task unless told to reuse it;
# reusing it cut PostgreSQL's CPU per order by three quarters in `make bench`.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    # Wakes the relays, which publish rows left behind by one that died once its lease runs out.
    "sweep-outbox": {"task": "eventbus.sweep_outbox", "schedule": 30.0},
    "cancel-stale-orders": {"task": "orders.cancel_stale_orders", "schedule": 15.0},
    "release-stale-stock-holds": {"task": "inventory.release_stale_holds", "schedule": 60.0},
    "void-stale-authorizations": {"task": "payments.void_stale_authorizations", "schedule": 60.0},
    "retention": {
        "task": "eventbus.retention",
        "schedule": env_duration("EVENTBUS_RETENTION_INTERVAL", "1h").total_seconds(),
    },
}
ORDER_PENDING_TIMEOUT_SECONDS = env_int("ORDER_PENDING_TIMEOUT_SECONDS", 120)
# Stock and authorizations held for an order never decided (one that does not exist, say) are
# released after this. A live order is decided within the timeout above, so this must outlast it.
HOLD_EXPIRY_SECONDS = env_int("HOLD_EXPIRY_SECONDS", 600)
if HOLD_EXPIRY_SECONDS <= ORDER_PENDING_TIMEOUT_SECONDS:
    raise ImproperlyConfigured(
        f"HOLD_EXPIRY_SECONDS ({HOLD_EXPIRY_SECONDS}) must exceed ORDER_PENDING_TIMEOUT_SECONDS "
        f"({ORDER_PENDING_TIMEOUT_SECONDS}), or holds of orders still being decided are released"
    )
# Quorum queues replicate and enforce a delivery limit; topic exchanges let retry countdowns
# use RabbitMQ's native delayed delivery instead of holding ETAs in worker memory.
CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"
CELERY_WORKER_DETECT_QUORUM_QUEUES = True
CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "quorum"
TASK_QUEUE_DELIVERY_LIMIT = env_int("TASK_QUEUE_DELIVERY_LIMIT", 10)
# The task queues follow from the subscriptions (eventbus.topology.task_queues): each subscribing service's
# `<service>.tasks` and the bus's housekeeping queue, given to Celery when the apps are ready; a service's
# tasks (`<service>.*`) are routed to its queue by name. A new service needs no line here.
CELERY_TASK_DEFAULT_QUEUE = "eventbus.tasks"
CELERY_TASK_DEFAULT_EXCHANGE = "eventbus.tasks"
CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
CELERY_TASK_DEFAULT_ROUTING_KEY = "eventbus.tasks"
CELERY_TASK_ROUTES = ("eventbus.topology.route_task",)

# --- REST framework.
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    # JSON only: a form on another site can post form-encoded or multipart bodies without a CSRF token.
    "DEFAULT_PARSER_CLASSES": ["orderproj.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "orderproj.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["orderproj.throttling.AnonRateThrottle", "orderproj.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_rate("API_THROTTLE_ANON", "120/min"),
        "user": env_rate("API_THROTTLE_USER", "600/min"),
    },
    # The client's address is the connection's, unless this many reverse proxies append X-Forwarded-For.
    "NUM_PROXIES": env_int("TRUSTED_PROXY_COUNT", 0),
}
# --- Admin login throttling (django-axes, counted in the database): after ADMIN_LOGIN_FAILURE_LIMIT
# wrong passwords for one username from one address, that pair is locked out for ADMIN_LOGIN_COOLOFF.
# Per pair, not per username: a stranger cannot lock the real admin out by failing on purpose.
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_duration("ADMIN_LOGIN_COOLOFF", "15m")
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # a row per successful login, never deleted; failures are still counted
AXES_CLIENT_IP_CALLABLE = "orderproj.throttling.client_address"  # the address the API throttles see

SPECTACULAR_SETTINGS = {
    "TITLE": "Order pipeline API",
    "DESCRIPTION": "Place orders and follow them through the event-driven saga.",
    "VERSION": "1.0.0",
    # /api/docs/ loads Swagger UI from the project's static files, never from a CDN: it renders in a
    # closed network, and no unpinned third-party script runs with the site's origin.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(processName)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "celery": {"level": LOG_LEVEL},
        "amqp": {"level": "WARNING"},
        "kombu": {"level": "WARNING"},
        "django.db.backends": {"level": "WARNING"},
    },
}

# --- Event bus.
EVENTBUS_MAX_ATTEMPTS = env_int("EVENTBUS_MAX_ATTEMPTS", 5)  # per handler and event, the first try included
EVENTBUS_RETRY_BASE_DELAY = float(os.environ.get("EVENTBUS_RETRY_BASE_DELAY", "1"))  # seconds
EVENTBUS_RETRY_MAX_DELAY = float(os.environ.get("EVENTBUS_RETRY_MAX_DELAY", "60"))  # seconds
EVENTBUS_MAX_HOPS = env_int("EVENTBUS_MAX_HOPS", 8)  # longest causation chain before it is called a loop
EVENTBUS_QUEUE_DELIVERY_LIMIT = env_int("EVENTBUS_QUEUE_DELIVERY_LIMIT", 20)
EVENTBUS_INTAKE_PREFETCH = env_int("EVENTBUS_INTAKE_PREFETCH", 64)
# Most events of one service handed to one `<service>.handle_batch` task when they arrive together.
EVENTBUS_BATCH_MAX = env_int("EVENTBUS_BATCH_MAX", 32)
# The intake holds events once this many tasks of its worker are in flight (0: as many as pool processes)...
# One is the default: events wait for the task in flight and then go together, which at half load made
# p99 several times shorter in `make bench` (docs/benchmark.md), while an idle worker waits for nothing.
EVENTBUS_INTAKE_TASKS_IN_FLIGHT = env_int("EVENTBUS_INTAKE_TASKS_IN_FLIGHT", 1)
# ... until one is done, at most this long.
EVENTBUS_BATCH_WAIT_SECONDS = float(os.environ.get("EVENTBUS_BATCH_WAIT_SECONDS", "0.1"))
EVENTBUS_RELAY_BATCH = env_int("EVENTBUS_RELAY_BATCH", 500)
EVENTBUS_RELAY_POLL_SECONDS = float(os.environ.get("EVENTBUS_RELAY_POLL_SECONDS", "1"))
# A relay's hold on the rows it publishes; it must outlast the confirm wait, or a slow batch goes out twice.
EVENTBUS_RELAY_LEASE_SECONDS = float(os.environ.get("EVENTBUS_RELAY_LEASE_SECONDS", "30"))
EVENTBUS_RELAY_CONFIRM_TIMEOUT_SECONDS = float(os.environ.get("EVENTBUS_RELAY_CONFIRM_TIMEOUT_SECONDS", "20"))
EVENTBUS_RELAY_MAX_ATTEMPTS = env_int("EVENTBUS_RELAY_MAX_ATTEMPTS", 10)  # then the row is blocked
# Encrypts secrets inside events: comma-separated keys, the first seals, all unseal (see eventbus.sealing).
EVENTBUS_SEAL_KEY = os.environ.get("EVENTBUS_SEAL_KEY", "")
EVENTBUS_SEAL_KEY_FILE: Path | None = None  # where the key is kept (and made) when EVENTBUS_SEAL_KEY is empty
# Broker identities (eventbus.identities; docs/security.md). The relay publishes each producer's events as
# that producer's broker user: `orders:<password>,inventory:<password>,payments:<password>`.
EVENTBUS_PUBLISHER_CREDENTIALS = os.environ.get("EVENTBUS_PUBLISHER_CREDENTIALS", "")
# Dead-letter as `forged` an event, or a handler task, that the broker user allowed to send it did not send.
EVENTBUS_VERIFY_PUBLISHER = env_bool("EVENTBUS_VERIFY_PUBLISHER", True)
# Read by `manage.py broker_setup` and `broker_subscriber` only: the administrator's AMQP URL (its vhost is
# the one they set up), and the passwords broker_setup gives the pipeline's users.
BROKER_ADMIN_URL = os.environ.get("BROKER_ADMIN_URL", "")
# BROKER_PASSWORD_<USER> for each pipeline user: OPS, and one per service (ORDERS, INVENTORY, ...); read by
# prefix, so that a new service's password needs no line here.
BROKER_PASSWORDS = env_prefixed("BROKER_PASSWORD_")
BROKER_PASSWORD_FILE: Path | None = None  # where passwords missing above are kept (and made): local stacks
# Retention (eventbus.retention): rows that have served their purpose are deleted after these
# windows. The inbox window must outlive every redelivery; `manage.py check` says when it is too short.
EVENTBUS_RETENTION_OUTBOX_SENT = env_duration("EVENTBUS_RETENTION_OUTBOX_SENT", "7d")
EVENTBUS_RETENTION_INBOX = env_duration("EVENTBUS_RETENTION_INBOX", "14d")
EVENTBUS_RETENTION_TASK_RESULTS = env_duration("EVENTBUS_RETENTION_TASK_RESULTS", "7d")
EVENTBUS_RETENTION_DEAD_LETTERS = env_duration("EVENTBUS_RETENTION_DEAD_LETTERS", "30d")
