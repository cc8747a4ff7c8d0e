"""A JSON object from a client's bytes, or the client-safe error that says what is wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def load_object(
    raw: str | bytes,
    error: Callable[[str], Exception],
    *,
    not_json: str,
    not_object: str,
    parse_constant: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """`raw` parsed as a JSON object; else `error(not_json)` or `error(not_object)`.

    Nesting deeper than Python recurses (RecursionError) is invalid JSON like any other."""
    try:
        value = json.loads(raw, parse_constant=parse_constant)
    except (ValueError, RecursionError):
        raise error(not_json) from None
    if not isinstance(value, dict):
        raise error(not_object)
    return value
