"""Sealed fields: a secret (a payment token) travels inside an event encrypted, never in clear.

Brokers, outbox rows, task arguments and results only ever hold the sealed form; the one handler
that needs the secret unseals it. The keys come from EVENTBUS_SEAL_KEY, comma-separated: the first
seals, every one unseals, so a key is rotated by putting a new one first and dropping the old one
once nothing sealed with it is left. Without it (`make run`, `make test`) the key is the one kept in
EVENTBUS_SEAL_KEY_FILE, made on first use. It is never derived from anything in the repository.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from functools import cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PREFIX = "sealed:"


class SealBroken(ValueError):
    """The sealed value was not produced with any of the keys or was altered."""


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    # Any string is a key: each is stretched to a Fernet key, so a long random password serves as well.
    return MultiFernet(
        [Fernet(base64.urlsafe_b64encode(hashlib.sha256(f"eventbus-seal:{key}".encode()).digest())) for key in keys]
    )


@cache
def seal_key_file(path: Path) -> str:
    """The key kept in `path`, made (a fresh Fernet key, mode 0600) if there is none yet. Processes that
    start together may race to make it: a hard link makes the file appear whole, and the first one wins."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, draft = tempfile.mkstemp(dir=path.parent, prefix=".seal-key-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as draft_file:
                draft_file.write(Fernet.generate_key() + b"\n")
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(draft, path)
        finally:
            os.unlink(draft)
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it to have a new seal key made")
    return key


def seal_keys() -> tuple[str, ...]:
    """The seal keys in force, the sealing one first."""
    keys = tuple(key.strip() for key in settings.EVENTBUS_SEAL_KEY.split(",") if key.strip())
    if keys:
        return keys
    if settings.EVENTBUS_SEAL_KEY_FILE:
        return (seal_key_file(Path(settings.EVENTBUS_SEAL_KEY_FILE)),)
    raise ImproperlyConfigured("EVENTBUS_SEAL_KEY must be set")


def seal(secret: str) -> str:
    """Encrypt `secret` with the first seal key."""
    return PREFIX + _fernet(seal_keys()).encrypt(secret.encode()).decode()


def unseal(sealed: str) -> str:
    """Decrypt a value made by `seal` with any of the seal keys; raise SealBroken if none opens it."""
    if not sealed.startswith(PREFIX):
        raise SealBroken("value is not sealed")
    try:
        return _fernet(seal_keys()).decrypt(sealed.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise SealBroken("sealed value does not open with any seal key") from None
