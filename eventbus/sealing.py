"""Sealed fields: a secret (a payment token) travels inside an event encrypted, never in clear.

Brokers, outbox rows, task arguments and results only ever hold the sealed form; the one handler
that needs the secret unseals it. The key comes from EVENTBUS_SEAL_KEY (or the Django secret key).
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

PREFIX = "sealed:"


class SealBroken(ValueError):
    """The sealed value was not produced with this key or was altered."""


@cache
def _fernet(key_material: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(f"eventbus-seal:{key_material}".encode()).digest()))


def _key() -> Fernet:
    return _fernet(settings.EVENTBUS_SEAL_KEY or settings.SECRET_KEY)


def seal(secret: str) -> str:
    return PREFIX + _key().encrypt(secret.encode()).decode()


def unseal(sealed: str) -> str:
    if not sealed.startswith(PREFIX):
        raise SealBroken("value is not sealed")
    try:
        return _key().decrypt(sealed.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise SealBroken("sealed value does not open with this key") from None
