"""Delete what the retention windows let go: `manage.py retention [--dry-run] [--batch-size N]`."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus.retention import BATCH_SIZE, retention_run


class Command(BaseCommand):
    help = (
        "Delete, in batches, sent outbox rows, inbox rows, task results and replayed dead letters older than "
        "their EVENTBUS_RETENTION_* windows. Unsent outbox rows and unreplayed dead letters always stay."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="rows per delete transaction")

    def handle(self, *args: object, dry_run: bool, batch_size: int, **options: object) -> None:
        try:
            purges = retention_run(dry_run=dry_run, batch_size=batch_size, report=self.stdout.write)
        except (ImproperlyConfigured, ValueError) as error:
            raise CommandError(str(error)) from error
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(self.style.SUCCESS(f"retention: {verb} {sum(p.rows for p in purges)} rows in all"))
