"""The v2 request inside the hop encryption (PROTOCOL.md section 3), and its reply.

    {"body": "<JSON string of the parameters>", "endpoint": "register", "method": "POST",
     "headers": {...}}

Only parsed values matter: key order, `\\/` escapes, `method` case and `headers` vary by
client and are ignored.
"""

from __future__ import annotations

import json
from typing import Any

from errors import ClientError
from lsrpc.call import ClientCall


class V2RequestError(ClientError, ValueError):
    """The decrypted plaintext is not a usable v2 request; answered with an encrypted 400."""


def parse_params(raw: str | bytes | None) -> dict[str, Any]:
    """The JSON object of parameters; an absent or empty body is no parameters."""
    if raw is None or raw in ("", b""):
        return {}
    try:
        params = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise V2RequestError("Request body is not valid JSON") from None
    if not isinstance(params, dict):
        raise V2RequestError("Request body must be a JSON object")
    return params


def parse_request(plaintext: bytes) -> ClientCall:
    try:
        outer = json.loads(plaintext)
    except (ValueError, RecursionError):
        raise V2RequestError("Request is not valid JSON") from None
    if not isinstance(outer, dict):
        raise V2RequestError("Request must be a JSON object")
    endpoint = outer.get("endpoint")
    if endpoint is None:
        raise V2RequestError("Missing endpoint")
    if not isinstance(endpoint, str):
        raise V2RequestError("endpoint must be a string")
    body = outer.get("body")
    if isinstance(body, dict):  # tolerated: a body sent as an object rather than a string
        return ClientCall(endpoint=endpoint, params=body)
    if body is not None and not isinstance(body, str):
        raise V2RequestError("body must be a JSON string")
    return ClientCall(endpoint=endpoint, params=parse_params(body))


def render_reply(status: int, body: dict[str, int | str]) -> bytes:
    """The reply plaintext, ASCII only (iOS decodes it as ASCII)."""
    return json.dumps({"status": status, "body": body}, ensure_ascii=True).encode("ascii")
