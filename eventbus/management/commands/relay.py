"""Run the outbox relay in the foreground, publish what is pending once, or unblock rows."""

import signal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from eventbus import telemetry
from eventbus.outbox_claims import outbox_unblock
from eventbus.relay import Relay, relay_name, sweep


class Command(BaseCommand):
    help = "Publish outbox rows to RabbitMQ with publisher confirms, woken on commit and sweeping periodically."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--batch", type=int, default=settings.EVENTBUS_RELAY_BATCH)
        parser.add_argument("--poll", type=float, default=settings.EVENTBUS_RELAY_POLL_SECONDS)
        parser.add_argument("--once", action="store_true", help="publish what is pending and exit")
        parser.add_argument(
            "--name",
            default=None,
            help="this relay's name, unique among live relays, recorded on the rows it publishes "
            "(default: host-pid); a relay restarted under its old name frees what the old one held",
        )
        parser.add_argument(
            "--unblock", type=int, nargs="+", metavar="ID", help="put blocked outbox rows back in line and exit"
        )

    def handle(
        self, *args: object, batch: int, poll: float, once: bool, name: str | None, unblock: list[int] | None,
        **options: object,
    ) -> None:  # fmt: skip
        name = name or relay_name()
        if unblock:
            self.stdout.write(f"unblocked {outbox_unblock(ids=unblock)} of {len(unblock)} row(s)")
            return
        telemetry.configure("relay")
        try:
            if once:
                self.stdout.write(f"published {sweep(limit=batch, name=name)} event(s)")
                return
            relay = Relay(name=name, batch_size=batch, poll_seconds=poll)
        except ImproperlyConfigured as error:  # the producers' credentials are missing
            raise CommandError(str(error)) from None
        signal.signal(signal.SIGTERM, relay.stop)
        signal.signal(signal.SIGINT, relay.stop)
        relay.run()
