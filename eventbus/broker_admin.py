"""Setting up a vhost as its administrator: the pipeline's users and permissions (eventbus.identities), the
topology, and subscribe-only users for third parties. Users are the broker's, permissions each vhost's.

Through RabbitMQ's management API (the administrator's URL names the user and the vhost), so that
`make run`, the tests and Docker Compose's one-shot `migrate` service do it the same way.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote, unquote, urlsplit

import requests
from celery import Celery
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from kombu import Connection

from eventbus.identities import (
    Grant,
    broker_password,
    pipeline_grants,
    subscriber_grant,
    subscriber_user,
    url_as,
    url_vhost,
)
from eventbus.topology import declare_all


class ManagementApi:
    """The few calls of RabbitMQ's management HTTP API that set up users and permissions, as `admin_url`'s user."""

    def __init__(self, admin_url: str, management_url: str | None = None) -> None:
        parts = urlsplit(admin_url.split(";", 1)[0])
        self.auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        self.vhost = url_vhost(admin_url)
        self.base = (management_url or settings.RABBITMQ_MANAGEMENT_URL).rstrip("/") + "/api"

    def _call(self, method: str, path: str, **body: str) -> requests.Response:
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

    def delete_user(self, user: str) -> None:
        self._call("DELETE", f"users/{quote(user, safe='')}")


def broker_setup(admin_url: str, app: Celery) -> list[Grant]:
    """Create (or update) every pipeline user with its password and permissions on `admin_url`'s vhost,
    then declare the topology as the administrator; return the grants. Safe to run any number of times:
    it is also how a changed password reaches the broker."""
    api = ManagementApi(admin_url)
    grants = pipeline_grants()
    passwords = {grant.user: broker_password(grant.user) for grant in grants}  # all or none: fail before any
    for grant in grants:
        api.grant(grant, passwords[grant.user])
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


def subscriber_delete(admin_url: str, name: str) -> None:
    """Remove third-party subscriber `name`'s user (its queues stay, for the administrator to delete)."""
    ManagementApi(admin_url).delete_user(subscriber_user(name))
