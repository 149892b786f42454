"""A third party's subscriber: `manage.py broker_subscriber <name> [--queue <suffix> --event <type>... [--unbind]]
[--delete]`. Its user reads its own queues only; the administrator declares and binds them here."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus.broker_admin import (
    subscriber_bind,
    subscriber_create,
    subscriber_delete,
    subscriber_ensure,
    subscriber_unbind,
    subscription_bindings,
)
from eventbus.identities import subscriber_queue_name, subscriber_user


class Command(BaseCommand):
    help = (
        "Without --queue: create the broker user sub-<name> with a fresh password (ending the old one) and print "
        "its URL. It may read its queues sub-<name>.* and nothing else: no declare, no bind, no publish. With "
        "--queue and --event: declare the queue sub-<name>.<suffix> (and its .dlq) and bind it to the events named; "
        "the user is created (and its URL printed) if it does not exist, else its password stays."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="lowercase letters, digits and dashes")
        parser.add_argument("--queue", metavar="SUFFIX", help="the queue sub-<name>.<SUFFIX> to declare and bind")
        parser.add_argument(
            "--event",
            action="append",
            default=[],
            metavar="TYPE",
            help="bind the queue for this event type (orders.OrderPlaced.v1) or every version of a family "
            "(orders.OrderPlaced); repeatable; bindings the queue has stay",
        )
        parser.add_argument("--unbind", action="store_true", help="remove these bindings of the queue instead")
        parser.add_argument(
            "--delete", action="store_true", help="remove the user and its queues, with the events in them"
        )

    def handle(
        self,
        *args: object,
        name: str,
        queue: str | None,
        event: list[str],
        unbind: bool,
        delete: bool,
        **options: object,
    ) -> None:
        admin_url = settings.BROKER_ADMIN_URL
        if not admin_url:
            raise CommandError("BROKER_ADMIN_URL is not set: the administrator's AMQP URL, on the events' vhost")
        if delete and (queue or event or unbind):
            raise CommandError("--delete removes the user and all its queues: it takes no --queue, --event, --unbind")
        if bool(queue) != bool(event):
            raise CommandError("--queue and --event go together: the queue to bind, and the events to bind it for")
        if unbind and not queue:
            raise CommandError("--unbind needs --queue and --event: the bindings to remove")
        try:
            user = subscriber_user(name)
            if delete:
                queues = subscriber_delete(admin_url, name)
                self.stdout.write(f"deleted the broker user {user} and its queues: {', '.join(queues) or 'none'}")
            elif not queue:
                self.stdout.write(subscriber_create(admin_url, name))
            else:
                self._bind(admin_url, name, queue, event, unbind=unbind)
        except (ValueError, ImproperlyConfigured) as error:
            raise CommandError(str(error)) from None

    def _bind(self, admin_url: str, name: str, suffix: str, event_types: list[str], *, unbind: bool) -> None:
        queue = subscriber_queue_name(name, suffix)
        routes = subscription_bindings(event_types)  # before anything changes: an unknown type changes nothing
        if unbind:
            bound = subscriber_unbind(admin_url, name, suffix, routes)
        else:
            if url := subscriber_ensure(admin_url, name):
                self.stdout.write(url)
            bound = subscriber_bind(admin_url, name, suffix, routes)
        self.stdout.write(f"{queue} is bound to: {', '.join(f'{x} {key}' for x, key in bound) or 'nothing'}")
