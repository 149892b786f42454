"""Error answers and error reports: JSON on every /api/ error, and no secret in any debug page or report.

Django's debug page (DEBUG on) and its error e-mails show settings, request data and the local
variables of every frame. Its stock filter hides settings named like secrets, but not a broker or
database URL holding a password, nor a variable such as `payment_token`, and under DEBUG it ignores
the `sensitive_*` decorators altogether. `SecretsHidingFilter` closes those gaps; it is
`DEFAULT_EXCEPTION_REPORTER_FILTER`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.debug import SafeExceptionReporterFilter
from rest_framework.response import Response
from rest_framework.views import exception_handler

API_PREFIX = "/api/"

# Django's own names, plus connection settings (their URLs carry passwords and the database's path).
SECRET_NAME = re.compile(
    r"API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL$|DATABASE|BROKER|LOCATION|RUN_DIR", re.I
)
# In the text of a value: `'payment_token': 'tok_…'`, `"password": …` or `token=…`, unless already starred.
SECRET_FIELD = re.compile(
    r"(?:token|pass|secret|signature|cookie|credential|api_?key)\w*['\"]?\s*[:=](?!\s*['\"]?\*)", re.I
)
URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.I)


class SecretsHidingFilter(SafeExceptionReporterFilter):
    """Hides secrets in debug pages and error reports, with DEBUG on too: settings, request META and
    POST fields named like secrets, passwords inside URLs, and frame variables named like a secret or
    whose value shows a secret field (a serializer's data, a dict of keyword arguments)."""

    hidden_settings = SECRET_NAME

    def is_active(self, request: HttpRequest | None) -> bool:
        return True  # the stock filter honours `sensitive_variables` only with DEBUG off

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):  # str() too: a lazy object passes for a str
            return URL_PASSWORD.sub(rf"\1{self.cleansed_substitute}@", str(cleansed))
        return cleansed

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        parameters = super().get_post_parameters(request)
        secret = [name for name in parameters if SECRET_NAME.search(name)]
        if secret:
            parameters = parameters.copy()
            for name in secret:
                parameters[name] = self.cleansed_substitute
        return parameters

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> list[tuple[str, Any]]:
        return [
            (name, self._cleanse_variable(name, value))
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]

    def _cleanse_variable(self, name: str, value: Any) -> Any:
        cleansed = self.cleanse_setting(name, value)
        try:
            text = repr(cleansed)
        except Exception:  # a broken __repr__ must not break the error report
            return cleansed
        if SECRET_FIELD.search(text) or URL_PASSWORD.search(text):
            return self.cleansed_substitute
        return cleansed


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus Django's request errors as JSON: a body over DATA_UPLOAD_MAX_MEMORY_SIZE is a
    413, another suspicious request a 400. Anything else propagates (Django logs it; see JsonApiErrors)."""
    response = exception_handler(exc, context)
    if response is not None or not isinstance(exc, SuspiciousOperation):
        return response
    # Django logs these to django.security.<name> when it handles them; it does not see them here.
    logging.getLogger(f"django.security.{exc.__class__.__name__}").error(str(exc))
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "The request body is too large."}, status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    return Response({"detail": "Bad request."}, status=HTTPStatus.BAD_REQUEST)


class JsonApiErrors:
    """Middleware, first in the list: under /api/, an error response that is not DRF's own (Django's
    debug pages, its 404 and 500 pages, a CSRF or host failure) becomes `{"detail": ...}` with the same
    status, so API clients always get JSON and no debug page is ever served there."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.path_info.startswith(API_PREFIX)
            and response.status_code >= 400
            and not isinstance(response, Response)  # DRF's errors are JSON (or its browsable page of it)
            and "json" not in response.get("Content-Type", "")
        ):
            return JsonResponse({"detail": response.reason_phrase}, status=response.status_code)
        return response
