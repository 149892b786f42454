"""Broker identities: who connects to RabbitMQ as whom, and what RabbitMQ lets each of them do.

One rule, in this module only: the broker user of a service is the service's name, which is also the
producer name of the events it publishes (eventbus.contracts). So an event's type names the one user
allowed to publish it, and RabbitMQ vouches for the sender through the AMQP `user_id` property, which
it refuses when it differs from the connection's user. The users:

- one per service (`orders`, `inventory`, `payments`): its worker, and the relay when it publishes that
  producer's outbox rows. Writes its own events exchange and task exchange, reads its own queues.
- `ops`: web, beat and Flower. Sends tasks (beat), reads queue statistics (management tag `monitoring`),
  replays dead letters (the default exchange). Never writes an events exchange.
- `sub-<name>`: a third party's subscriber, which reads the queues named `sub-<name>.*` that the administrator
  declares and binds for it (`manage.py broker_subscriber <name> --queue ... --event ...`).

The permissions below are regexes RabbitMQ matches against exchange and queue names. It cannot tell an
exchange from a queue of the same name, and the event queues `inventory.events` and `payments.events` share
their names with those producers' exchanges: read on the exchange `inventory.events`, which binding a queue to
it takes, would be read on the queue `inventory.events` too. So no user but the administrator binds a queue to
an events exchange, and a subscriber reads nothing but its own queues.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from eventbus.asyncapi import published_contracts
from eventbus.contracts import lookup
from eventbus.names import event_exchange_name
from eventbus.passwords import PasswordFile
from eventbus.subscriptions import Subscriber, subscribers
from eventbus.topology import task_queues

OPS = "ops"
SUBSCRIBER_PREFIX = "sub-"
SUBSCRIBER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
SUBSCRIBER_QUEUE_SUFFIX = re.compile(r"[a-z0-9][a-z0-9_-]{0,59}")  # no dot: `<queue>.dlq` is its dead letters'
# Names Celery gives its own exchanges and queues: native delayed delivery (celery_delayed_N and
# celery_delayed_delivery), task events (celeryev, celeryev.<uuid>), remote control (celery.pidbox,
# reply.celery.pidbox, <node>.celery.pidbox, <uuid>.reply.celery.pidbox) and server-named queues.
CELERY_INFRASTRUCTURE = (
    r"celery_delayed_(\d+|delivery)",
    r"celeryev(\..+)?",
    r"(.+\.)?(reply\.)?celery\.pidbox",
    r"amq\.gen-.+",
)
DEFAULT_EXCHANGE = "amq.default"  # how permissions name the exchange that routes to a queue by its name
NOTHING = "^$"  # no exchange or queue has an empty name (the default exchange is `amq.default` here)


@dataclass(frozen=True)
class Grant:
    """A broker user's management tags and its permission regexes on a vhost."""

    user: str
    tags: str
    configure: str
    write: str
    read: str


def service_user(service: str) -> str:
    """The broker user of a service, which is also the producer of its events."""
    return service


def publisher_of(event_type: str) -> str:
    """The only broker user whose messages of `event_type` are authentic: its producer's."""
    return service_user(lookup(event_type).producer)


def producers() -> list[str]:
    """The producers the relay publishes for (contracts registered by test modules left out)."""
    return sorted({contract.producer for contract in published_contracts()})


def pipeline_grants() -> list[Grant]:
    """The users of the pipeline's own processes: one per service, then ops."""
    consumers = {subscriber.service: subscriber for subscriber in subscribers()}
    publishing = set(producers())
    services = sorted(publishing | set(consumers))
    return [_service_grant(name, consumers.get(name), name in publishing) for name in services] + [_ops_grant()]


def _service_grant(service: str, subscriber: Subscriber | None, produces: bool) -> Grant:
    writes, reads = [], []
    if subscriber is not None:
        housekeeping = settings.CELERY_TASK_DEFAULT_QUEUE
        # Binding a queue to its exchange takes write on the queue and read on the exchange; the worker
        # binds its task queues to Celery's delayed-delivery exchange when it starts.
        writes += [subscriber.task_queue, housekeeping]
        reads += [*subscriber.queues, housekeeping]
    if produces:
        writes.append(event_exchange_name(service))
    return Grant(
        user=service_user(service),
        tags="",
        configure=_regex(),
        write=_regex(*writes),
        read=_regex(*reads),
    )


def _ops_grant() -> Grant:
    task_exchanges = [queue.exchange.name for queue in task_queues()]
    return Grant(
        user=OPS, tags="monitoring", configure=_regex(), write=_regex(*task_exchanges, DEFAULT_EXCHANGE), read=_regex()
    )


def subscriber_user(name: str) -> str:
    """The broker user of third-party subscriber `name`; its queues are named `sub-<name>.<anything>`."""
    if not SUBSCRIBER_NAME.fullmatch(name):
        raise ValueError(f"subscriber name {name!r}: use 1 to 40 lowercase letters, digits and dashes")
    return f"{SUBSCRIBER_PREFIX}{name}"


def subscriber_grant(name: str) -> Grant:
    """Read (get, consume) its own queues `sub-<name>.*`, which the administrator declares and binds; nothing
    else: no declare (a passive one needs no permission), no bind, no read of any exchange, no write."""
    return Grant(user=subscriber_user(name), tags="", configure=NOTHING, write=NOTHING, read=subscriber_queues(name))


def subscriber_queue_name(name: str, suffix: str) -> str:
    """Subscriber `name`'s queue `sub-<name>.<suffix>`; its dead letters go to `sub-<name>.<suffix>.dlq`."""
    if not SUBSCRIBER_QUEUE_SUFFIX.fullmatch(suffix):
        raise ValueError(f"queue suffix {suffix!r}: use 1 to 60 lowercase letters, digits, dashes and underscores")
    return f"{subscriber_user(name)}.{suffix}"


def subscriber_queues(name: str) -> str:
    """The regex of subscriber `name`'s queues, `sub-<name>.<anything>` (their `.dlq` too), anchored."""
    return f"^{re.escape(subscriber_user(name))}\\..+$"


def _regex(*names: str) -> str:
    """Exactly `names` and Celery's infrastructure, anchored."""
    return "^(" + "|".join([*map(re.escape, names), *CELERY_INFRASTRUCTURE]) + ")$"


# --- credentials and URLs


def publisher_passwords() -> dict[str, str]:
    """Each producer's password, by broker user: from EVENTBUS_PUBLISHER_CREDENTIALS (`orders:<pw>,...`, with
    `%`-escapes where a password holds `,` or `:`), else a local stack's password file; raises when one lacks."""
    users = [service_user(producer) for producer in producers()]
    if settings.EVENTBUS_PUBLISHER_CREDENTIALS:
        pairs = (item.strip().partition(":") for item in settings.EVENTBUS_PUBLISHER_CREDENTIALS.split(","))
        passwords = {unquote(user): unquote(password) for user, _, password in pairs if user}
    elif settings.BROKER_PASSWORD_FILE:
        passwords = {user: PasswordFile(settings.BROKER_PASSWORD_FILE).password(user) for user in users}
    else:
        passwords = {}
    if missing := [user for user in users if not passwords.get(user)]:
        raise ImproperlyConfigured(
            f"EVENTBUS_PUBLISHER_CREDENTIALS has no password for {', '.join(missing)}: the relay publishes each "
            "producer's events as that producer's broker user (`orders:<password>,inventory:<password>,...`)"
        )
    return passwords


def broker_password(user: str) -> str:
    """A pipeline user's password for `manage.py broker_setup`: BROKER_PASSWORDS (the environment), else a local
    stack's password file."""
    if password := settings.BROKER_PASSWORDS.get(user):
        return password
    if settings.BROKER_PASSWORD_FILE:
        return PasswordFile(settings.BROKER_PASSWORD_FILE).password(user)
    raise ImproperlyConfigured(f"no password for the broker user {user!r}: set BROKER_PASSWORD_{user.upper()}")


def url_as(url: str, user: str, password: str) -> str:
    """`url` (every node of a `;`-separated failover list) logged in as `user` instead."""
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return ";".join(
        urlunsplit(parts._replace(netloc=userinfo + parts.netloc.rpartition("@")[2]))
        for parts in map(urlsplit, filter(None, url.split(";")))
    )


@cache
def url_user(url: str) -> str | None:
    """The user a broker URL logs in as (its first node's), None when it names none."""
    username = urlsplit(url.split(";", 1)[0]).username
    return unquote(username) if username else None


def url_vhost(url: str) -> str:
    """The vhost of a broker URL: its path, unquoted, `/` when empty."""
    path = urlsplit(url.split(";", 1)[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"
