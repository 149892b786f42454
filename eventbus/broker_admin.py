"""Setting up a vhost as its administrator: the pipeline's users and permissions (eventbus.identities), the
topology, and third parties' subscribers: a read-only user each, and the queues the administrator declares and
binds for it (a subscriber may bind nothing itself). Users are the broker's, permissions each vhost's.

Through RabbitMQ's management API (the administrator's URL names the user and the vhost), so that
`make run`, the tests and Docker Compose's one-shot `migrate` service do it the same way.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

import amqp
import requests
from celery import Celery
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from kombu import Connection

from eventbus.asyncapi import published_contracts
from eventbus.identities import (
    SUBSCRIBER_NAME,
    SUBSCRIBER_PREFIX,
    Grant,
    broker_password,
    pipeline_grants,
    subscriber_grant,
    subscriber_queue_name,
    subscriber_queues,
    subscriber_user,
    url_as,
    url_vhost,
)
from eventbus.topology import dead_letter_queue, declare_all, event_exchange, event_queue

Route = tuple[str, str]  # (producer, routing key) to bind with; (exchange, routing key) of a binding


class ManagementApi:
    """The few calls of RabbitMQ's management HTTP API that set up users and permissions and look after
    subscribers' queues, as `admin_url`'s user."""

    def __init__(self, admin_url: str, management_url: str | None = None) -> None:
        parts = urlsplit(admin_url.split(";", 1)[0])
        self.auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        self.vhost = url_vhost(admin_url)
        self.base = (management_url or settings.RABBITMQ_MANAGEMENT_URL).rstrip("/") + "/api"

    def _call(self, method: str, path: str, **body: str) -> requests.Response:
        """`method` on `path` (relative to /api), raising on an error; deleting what is already gone is none."""
        response = requests.request(method, f"{self.base}/{path}", json=body or None, auth=self.auth, timeout=30)
        if response.status_code >= 400 and not (method == "DELETE" and response.status_code == 404):
            raise ImproperlyConfigured(
                f"RabbitMQ management API: {method} /api/{path} as {self.auth[0]!r}: {response.status_code} "
                f"{response.text[:300]}"
            )
        return response

    def create_vhost(self) -> None:
        """The vhost, and the administrator's own permissions on it (RabbitMQ grants none by itself)."""
        self._call("PUT", f"vhosts/{quote(self.vhost, safe='')}")
        self.grant(Grant(user=self.auth[0], tags="", configure=".*", write=".*", read=".*"), None)

    def delete_vhost(self) -> None:
        self._call("DELETE", f"vhosts/{quote(self.vhost, safe='')}")

    def grant(self, grant: Grant, password: str | None) -> None:
        """Create or update the user (its password too, when given) and set its permissions on the vhost."""
        if password is not None:
            self._call("PUT", f"users/{quote(grant.user, safe='')}", password=password, tags=grant.tags)
        self._call(
            "PUT",
            f"permissions/{quote(self.vhost, safe='')}/{quote(grant.user, safe='')}",
            configure=grant.configure,
            write=grant.write,
            read=grant.read,
        )

    def has_user(self, user: str) -> bool:
        """Whether the broker knows `user` (on any vhost)."""
        return any(row["name"] == user for row in self._call("GET", "users?columns=name").json())

    def delete_user(self, user: str) -> None:
        self._call("DELETE", f"users/{quote(user, safe='')}")

    def users_on_vhost(self) -> list[str]:
        """The users that have permissions on the vhost."""
        return [row["user"] for row in self._call("GET", f"vhosts/{quote(self.vhost, safe='')}/permissions").json()]

    def queues(self) -> list[str]:
        """The names of the vhost's queues."""
        return [row["name"] for row in self._call("GET", f"queues/{quote(self.vhost, safe='')}?columns=name").json()]

    def delete_queue(self, queue: str) -> None:
        self._call("DELETE", f"queues/{quote(self.vhost, safe='')}/{quote(queue, safe='')}")

    def queue_bindings(self, queue: str) -> list[Route]:
        """(exchange, routing key) of each binding of `queue`, but the default exchange's."""
        rows = self._call("GET", f"queues/{quote(self.vhost, safe='')}/{quote(queue, safe='')}/bindings").json()
        return sorted((row["source"], row["routing_key"]) for row in rows if row["source"])


def broker_setup(admin_url: str, app: Celery) -> list[Grant]:
    """Create (or update) every pipeline user with its password and permissions on `admin_url`'s vhost,
    then declare the topology as the administrator; return the grants. Safe to run any number of times:
    it is also how a changed password reaches the broker, and how a subscriber created under an older grant
    gets the current one."""
    api = ManagementApi(admin_url)
    grants = pipeline_grants()
    passwords = {grant.user: broker_password(grant.user) for grant in grants}  # all or none: fail before any
    for grant in grants:
        api.grant(grant, passwords[grant.user])
    for user in api.users_on_vhost():
        name = user.removeprefix(SUBSCRIBER_PREFIX)
        if user.startswith(SUBSCRIBER_PREFIX) and SUBSCRIBER_NAME.fullmatch(name):
            api.grant(subscriber_grant(name), None)
    with Connection(admin_url) as connection:
        connection.ensure_connection(max_retries=3)
        declare_all(connection, app)
    return grants


def subscriber_create(admin_url: str, name: str) -> str:
    """Create third-party subscriber `name` (or give it a new password, which ends the old one) and return the
    URL it connects with: the first node of `admin_url`, as its own user."""
    password = secrets.token_urlsafe(24)
    ManagementApi(admin_url).grant(subscriber_grant(name), password)
    return url_as(admin_url.split(";", 1)[0], subscriber_user(name), password)


def subscriber_ensure(admin_url: str, name: str) -> str | None:
    """Create third-party subscriber `name` if the broker has no such user, and return its URL then; an existing
    one keeps its password, and gets the current grant on `admin_url`'s vhost."""
    api = ManagementApi(admin_url)
    if not api.has_user(subscriber_user(name)):
        return subscriber_create(admin_url, name)
    api.grant(subscriber_grant(name), None)
    return None


def subscription_bindings(event_types: Iterable[str]) -> set[Route]:
    """(producer, routing key) for each event type (`orders.OrderPlaced.v1`) or family (`orders.OrderPlaced`:
    every version) that a service publishes; a ValueError names the first that none is, and the known ones."""
    contracts = published_contracts()
    bindings: set[Route] = set()
    for event_type in event_types:
        matching = [c for c in contracts if event_type in (c.type, c.family)]
        if not matching:
            known = ", ".join(sorted({c.family for c in contracts}))
            raise ValueError(f"unknown event type {event_type!r}: name a type (`<family>.v1`) or a family: {known}")
        bindings |= {(c.producer, c.routing_key) for c in matching}
    return bindings


def subscriber_bind(admin_url: str, name: str, suffix: str, bindings: Iterable[Route]) -> list[Route]:
    """Declare subscriber `name`'s queue `sub-<name>.<suffix>` (quorum, dead-lettering to its `.dlq`) as the
    administrator, and bind it on each (producer, routing key) to the producer's exchange; bindings it already
    has stay. Return (exchange, routing key) of every binding it has now."""
    queue = event_queue(subscriber_queue_name(name, suffix), bindings)
    with Connection(admin_url) as connection:
        channel = connection.default_channel
        dead_letter_queue(queue.name)(channel).declare()
        queue(channel).declare()
    return ManagementApi(admin_url).queue_bindings(queue.name)


def subscriber_unbind(admin_url: str, name: str, suffix: str, bindings: Iterable[Route]) -> list[Route]:
    """Remove these bindings of subscriber `name`'s queue `sub-<name>.<suffix>` (the queue stays, with what it
    holds); return (exchange, routing key) of every binding it has left. A ValueError when there is no such queue."""
    queue = subscriber_queue_name(name, suffix)
    with Connection(admin_url) as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            raise ValueError(f"there is no queue {queue!r}") from None
        for producer, key in sorted(bindings):
            channel.queue_unbind(queue, event_exchange(producer).name, key)
    return ManagementApi(admin_url).queue_bindings(queue)


def subscriber_delete(admin_url: str, name: str) -> list[str]:
    """Remove third-party subscriber `name`'s user, then its queues `sub-<name>.*` with the events in them (bound
    and unread, they would fill up); return the queues' names."""
    api = ManagementApi(admin_url)
    api.delete_user(subscriber_user(name))
    own = re.compile(subscriber_queues(name))
    queues = sorted(queue for queue in api.queues() if own.search(queue))
    for queue in queues:
        api.delete_queue(queue)
    return queues
