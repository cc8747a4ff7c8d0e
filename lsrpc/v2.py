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
from lsrpc.json_object import load_object


class V2RequestError(ClientError, ValueError):
    """The decrypted plaintext is not a usable v2 request; answered with an encrypted 400."""


def parse_params(raw: str | bytes | None) -> dict[str, Any]:
    """The JSON object of parameters; an absent or empty body is no parameters."""
    if raw is None or raw in ("", b""):
        return {}
    return load_object(
        raw,
        V2RequestError,
        not_json="Request body is not valid JSON",
        not_object="Request body must be a JSON object",
    )


def parse_request(plaintext: bytes) -> ClientCall:
    outer = load_object(
        plaintext,
        V2RequestError,
        not_json="Request is not valid JSON",
        not_object="Request must be a JSON object",
    )
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
