"""Subscribe-only broker credentials for a third party: `manage.py broker_subscriber <name> [--delete]`."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus.broker_admin import subscriber_create, subscriber_delete
from eventbus.identities import subscriber_user


class Command(BaseCommand):
    help = (
        "Create the broker user sub-<name> with a fresh password (ending the old one) and print its URL: it may "
        "declare, bind and read queues named sub-<name>.* on the events exchanges, and nothing else."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="lowercase letters, digits and dashes")
        parser.add_argument("--delete", action="store_true", help="remove the user instead")

    def handle(self, *args: object, name: str, delete: bool, **options: object) -> None:
        if not settings.BROKER_ADMIN_URL:
            raise CommandError("BROKER_ADMIN_URL is not set: the administrator's AMQP URL, on the events' vhost")
        try:
            user = subscriber_user(name)
            if delete:
                subscriber_delete(settings.BROKER_ADMIN_URL, name)
                self.stdout.write(f"deleted the broker user {user}")
                return
            self.stdout.write(subscriber_create(settings.BROKER_ADMIN_URL, name))
        except (ValueError, ImproperlyConfigured) as error:
            raise CommandError(str(error)) from None
