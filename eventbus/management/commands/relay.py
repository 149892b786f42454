"""Run the outbox relay in the foreground."""

import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from eventbus.relay import Relay, sweep


class Command(BaseCommand):
    help = "Publish outbox rows to RabbitMQ with publisher confirms, woken on commit and sweeping periodically."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--batch", type=int, default=settings.EVENTBUS_RELAY_BATCH)
        parser.add_argument("--poll", type=float, default=settings.EVENTBUS_RELAY_POLL_SECONDS)
        parser.add_argument("--once", action="store_true", help="publish what is pending and exit")

    def handle(self, *args: object, batch: int, poll: float, once: bool, **options: object) -> None:
        if once:
            self.stdout.write(f"published {sweep(limit=batch)} event(s)")
            return
        relay = Relay(batch_size=batch, poll_seconds=poll)
        signal.signal(signal.SIGTERM, relay.stop)
        signal.signal(signal.SIGINT, relay.stop)
        relay.run()
