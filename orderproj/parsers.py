"""Request parsing shared by the API: JSON only, strict."""

from __future__ import annotations

import codecs
import json
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils.json import strict_constant


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refusing a repeated name: json keeps the last one silently, so
    `{"quantity": 1, "quantity": 100}` would mean whatever the parser at each hop decides."""
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"duplicate key {name!r}")
        members[name] = value
    return members


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, stricter: an object with a repeated key, NaN or Infinity is a 400, and so is a
    body nested too deeply for Python's json module (which raises RecursionError, not ValueError)."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
            return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=strict_constant)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply") from None
        except ValueError as error:
            raise ParseError(f"JSON parse error - {error}") from None
