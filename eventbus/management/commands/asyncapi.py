"""Write the AsyncAPI event catalog: `manage.py asyncapi [--output PATH] [--check] [--allow-breaking]`."""

from __future__ import annotations

from pathlib import Path

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus.asyncapi import build_document, catalog_breaking_changes, document_path, render


class Command(BaseCommand):
    help = "Write the AsyncAPI document of every published event (default docs/asyncapi.yaml), or check it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", type=Path, default=document_path(), help="default: %(default)s")
        parser.add_argument("--check", action="store_true", help="fail if the file is not what the code generates")
        parser.add_argument(
            "--allow-breaking", action="store_true", help="overwrite even if a published event version breaks"
        )

    def handle(self, *args: object, output: Path, check: bool, allow_breaking: bool, **options: object) -> None:
        document = build_document()
        text = render(document)
        committed = output.read_text() if output.exists() else None
        breaking = catalog_breaking_changes(yaml.safe_load(committed), document) if committed else []
        details = "".join(f"\n  breaking: {problem}" for problem in breaking)
        count = len(document["components"]["messages"])
        if check:
            if committed is None:
                raise CommandError(f"{output} does not exist; run `manage.py asyncapi` and commit it")
            if committed != text:
                raise CommandError(
                    f"{output} is not what the code generates; run `manage.py asyncapi` and commit it{details}"
                )
            self.stdout.write(f"{output} is up to date ({count} event types)")
            return
        if breaking and not allow_breaking:
            # Regenerating would quietly accept the break; a changed event needs a new version instead.
            raise CommandError(f"the code breaks event versions published in {output}:{details}")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        self.stdout.write(f"wrote {output} ({count} event types)")
