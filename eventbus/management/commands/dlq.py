"""Inspect and replay the dead-letter store: `manage.py dlq list|show|replay|purge`."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from celery import current_app
from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus import deadletters
from eventbus.models import DeadLetter


class Command(BaseCommand):
    help = "List, show, replay or purge dead letters."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="newest first")
        listing.add_argument("--reason", choices=DeadLetter.Reason.values)
        listing.add_argument("--limit", type=int, default=50)
        show = sub.add_parser("show", help="one dead letter in full")
        show.add_argument("id", type=int)
        replay = sub.add_parser("replay", help="publish again to the original event queue")
        replay.add_argument("ids", type=int, nargs="*")
        replay.add_argument("--all", action="store_true", help="every dead letter not replayed yet, but forged ones")
        replay.add_argument(
            "--body-file", type=Path, help="a corrected CloudEvent to send instead, checked first (one id only)"
        )
        purge = sub.add_parser("purge", help="delete dead letters")
        purge.add_argument("ids", type=int, nargs="*")
        purge.add_argument("--replayed", action="store_true", help="every dead letter already replayed")

    def handle(self, *args: object, action: str, **options: object) -> None:
        getattr(self, f"_{action}")(**options)

    def _list(self, *, reason: str | None, limit: int, **_: object) -> None:
        rows = DeadLetter.objects.all()
        if reason:
            rows = rows.filter(reason=reason)
        self.stdout.write(f"{'id':>6}  {'reason':<10} {'queue':<22} {'type or content type':<34} error")
        for row in rows[:limit]:
            what = row.event_type or row.content_type or "-"
            replayed = f" (replayed x{row.replay_count})" if row.replay_count else ""
            self.stdout.write(f"{row.pk:>6}  {row.reason:<10} {row.queue:<22} {what:<34} {row.error[:60]}{replayed}")
        self.stdout.write(f"{rows.count()} dead letter(s)")

    def _show(self, *, id: int, **_: object) -> None:
        row = self._get(id)
        fields = ["reason", "queue", "handler", "event_id", "event_type", "content_type", "attempts", "created_at",
                  "replayed_at", "replay_count", "error_class", "fingerprint", "error"]  # fmt: skip
        for field in fields:
            self.stdout.write(f"{field:>13}: {getattr(row, field)}")
        self.stdout.write(f"      headers: {json.dumps(row.headers, indent=2)}")
        self.stdout.write(f"         body: {row.body}")
        if row.traceback:
            self.stdout.write(f"    traceback:\n{row.traceback}")
        for record in row.replays.order_by("id"):
            edited = "corrected" if record.edited else "unchanged"
            self.stdout.write(f"     replayed: {record.replayed_at} by {record.actor}, {edited}, {record.outcome}")

    def _replay(self, *, ids: list[int], all: bool, body_file: Path | None, **_: object) -> None:
        if not ids and not all:
            raise CommandError("name the dead letters to replay, or --all")
        if body_file and len(ids) != 1:
            raise CommandError("--body-file replaces the body of exactly one dead letter")
        body = None
        if body_file:
            try:
                body = body_file.read_text()
                json.loads(body)
            except OSError as error:
                raise CommandError(f"cannot read {body_file}: {error.strerror or error}") from None
            except ValueError as error:  # UnicodeDecodeError included
                raise CommandError(f"{body_file} is not valid JSON: {error}") from None
        rows = [self._get(pk) for pk in ids] if ids else list(deadletters.replayable())
        refused = []
        with current_app.connection_for_write() as connection:
            for row in rows:
                try:
                    record = deadletters.replay(row, connection, actor=_actor(), body=body)
                except deadletters.InvalidBody as error:
                    raise CommandError(f"{body_file} is not sent: {error}") from None
                except deadletters.NotReplayable as error:
                    refused.append(str(error))
                    continue
                self.stdout.write(f"replayed #{row.pk} to {record.queue}")
        if refused:
            raise CommandError("\n".join(refused))

    def _purge(self, *, ids: list[int], replayed: bool, **_: object) -> None:
        if not ids and not replayed:
            raise CommandError("name the dead letters to purge, or --replayed")
        rows = DeadLetter.objects.filter(pk__in=ids) if ids else DeadLetter.objects.filter(replayed_at__isnull=False)
        deleted, _ = rows.delete()
        self.stdout.write(f"purged {deleted} dead letter(s)")

    def _get(self, pk: int) -> DeadLetter:
        try:
            return DeadLetter.objects.get(pk=pk)
        except DeadLetter.DoesNotExist:
            raise CommandError(f"no dead letter #{pk}") from None


def _actor() -> str:
    """Who replays from the command line, for the replay record: the OS user, when the system knows one."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"
