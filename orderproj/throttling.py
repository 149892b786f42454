"""API rate limits: DRF's per-address and per-user throttles, counted in the cache (Redis).

Rates are `REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]` (API_THROTTLE_ANON, API_THROTTLE_USER), read on
every request: DRF's own classes read them once, at import. When the cache cannot be reached the
throttles let requests through (fail open) and log a warning: an outage of Redis must not take the
API down with it, and the API's other limits (body size, lines per order) still hold.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.http import HttpRequest
from redis.exceptions import RedisError
from rest_framework import throttling
from rest_framework.settings import api_settings

if TYPE_CHECKING:  # rest_framework.views imports this module (DEFAULT_THROTTLE_CLASSES)
    from rest_framework.request import Request
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)


class _LiveRateFailOpen(throttling.SimpleRateThrottle):
    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request: Request, view: APIView) -> bool:
        try:
            return super().allow_request(request, view)
        except RedisError as error:
            logger.warning("API throttle %r not applied, the cache is unreachable: %s", self.scope, error)
            return True


class AnonRateThrottle(_LiveRateFailOpen, throttling.AnonRateThrottle):
    """Requests of anonymous clients, per client address."""


class UserRateThrottle(_LiveRateFailOpen, throttling.UserRateThrottle):
    """Requests of signed-in users, per user (anonymous ones per address)."""


def client_address(request: HttpRequest) -> str:
    """The client's address as the API throttles see it (REMOTE_ADDR, or X-Forwarded-For behind
    TRUSTED_PROXY_COUNT proxies); django-axes counts admin login failures per this address too."""
    return throttling.BaseThrottle().get_ident(request)
