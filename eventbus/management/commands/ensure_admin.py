"""Create the `admin` superuser once, with the password kept in a file outside git."""

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the admin superuser if it does not exist, with the password from --password-file."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", required=True, type=Path)

    def handle(self, *args: object, username: str, password_file: Path, **options: object) -> None:
        try:
            password = password_file.read_text().strip()
        except OSError as error:
            raise CommandError(f"cannot read {password_file}: {error}") from error
        if not password:
            raise CommandError(f"{password_file} is empty")
        user_model = get_user_model()
        if user_model.objects.filter(username=username).exists():
            self.stdout.write(f"admin user {username!r} exists (password in {password_file})")
            return
        user_model.objects.create_superuser(username=username, email="", password=password)
        # The password stays in its file: output ends up in logs.
        self.stdout.write(f"created admin user {username!r} (password in {password_file})")
