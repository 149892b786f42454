"""Create the pipeline's broker users and permissions on a vhost and declare the topology: `manage.py broker_setup`."""

from celery import current_app
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from eventbus.broker_admin import broker_setup
from eventbus.identities import url_vhost


class Command(BaseCommand):
    help = (
        "As the broker's administrator (BROKER_ADMIN_URL, whose vhost is the one set up): create or update each "
        "pipeline user with its password (BROKER_PASSWORD_<USER>) and permissions, then declare the topology."
    )

    def handle(self, *args: object, **options: object) -> None:
        if not settings.BROKER_ADMIN_URL:
            raise CommandError("BROKER_ADMIN_URL is not set: the administrator's AMQP URL, on the vhost to set up")
        try:
            grants = broker_setup(settings.BROKER_ADMIN_URL, current_app)
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from None
        vhost = url_vhost(settings.BROKER_ADMIN_URL)
        self.stdout.write(f"vhost {vhost!r}: users {', '.join(grant.user for grant in grants)}; topology declared")
