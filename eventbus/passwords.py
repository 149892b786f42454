"""Broker passwords kept in a file of a local stack's own: one per user, made on first use, mode 0600.

`make run`, `make test` and the harnesses keep theirs in RUN_DIR/broker-credentials.json, so that a
restarted stack, a test run and a command run by hand in the same checkout agree on them. Deployments
pass passwords in the environment instead (see orderproj.settings). No Django here: devstack uses it
before Django is set up.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

ADMIN = "admin"  # the broker's administrator: devstack, broker_setup and the tests, never a pipeline process
FILE_NAME = "broker-credentials.json"


class PasswordFile:
    """The passwords in `path`; a user without one gets one, written back at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def password(self, user: str) -> str:
        passwords = self._read()
        if user not in passwords:
            passwords[user] = secrets.token_urlsafe(24)  # URL-safe: it goes into broker URLs as it is
            self._write(passwords)
        return passwords[user]

    def _read(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _write(self, passwords: dict[str, str]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(passwords, file, indent=2, sort_keys=True)
        temporary.replace(self.path)
