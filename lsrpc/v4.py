"""Onion-request v4 framing (PROTOCOL.md section 5).

A v4 request plaintext is the bencoded list ``l <len>:<meta JSON> [<len>:<body>] e``;
a v4 reply is ``l <len>:<meta JSON> <len>:<body> e`` whose meta is
``{"code":<int>,"headers":{"content-type":"..."}}``.

Pure functions, no I/O. Every malformed input raises :class:`V4FramingError`, and
nothing else; its message is fixed text (never any part of the input), safe to
return to a client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NoReturn

from errors import ClientError
from lsrpc.bencode import BencodeError, decode, encode
from lsrpc.json_object import load_object

__all__ = [
    "MAX_META_SIZE",
    "MAX_PLAINTEXT_SIZE",
    "V4FramingError",
    "V4Request",
    "build_request",
    "build_response",
    "parse_request",
    "parse_response",
]

#: Largest v4 plaintext handled (the caller should already have bounded it).
MAX_PLAINTEXT_SIZE = 10 * 1024 * 1024

#: Largest meta JSON accepted (the meta is an endpoint, a method and a few headers).
MAX_META_SIZE = 64 * 1024

#: The list itself plus at most a handful of elements; anything beyond is refused.
_MAX_ITEMS = 8


class V4FramingError(ClientError, ValueError):
    """Malformed v4 request or response framing."""


@dataclass(frozen=True)
class V4Request:
    """A parsed v4 request.

    ``meta`` is the whole meta object as sent; ``endpoint`` is kept exactly as given
    (real clients send a leading slash, e.g. ``"/register"``); ``method`` is upper-cased
    (``"POST"`` when the meta has none); ``body`` is ``None`` when the list had a
    single element.
    """

    meta: dict[str, object]
    endpoint: str
    method: str
    body: bytes | None


def _reject_constant(_name: str) -> NoReturn:
    raise ValueError("non-finite number")


def _split_list(data: object, min_elems: int, max_elems: int) -> list[bytes]:
    """Decode ``data`` as a bencoded list of ``min_elems..max_elems`` byte strings."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise V4FramingError("payload is not bytes")
    if isinstance(data, memoryview):
        if data.nbytes > MAX_PLAINTEXT_SIZE:
            raise V4FramingError("payload too large")
        data = data.tobytes()
    if len(data) > MAX_PLAINTEXT_SIZE:
        raise V4FramingError("payload too large")
    if len(data) == 0 or data[0] != ord("l"):
        raise V4FramingError("payload is not a bencoded list")
    try:
        value = decode(data, max_depth=2, max_items=_MAX_ITEMS)
    except BencodeError as exc:
        raise V4FramingError(f"invalid bencode: {exc}") from None
    if not isinstance(value, list):  # pragma: no cover - guaranteed by the "l" check
        raise V4FramingError("payload is not a bencoded list")
    if not min_elems <= len(value) <= max_elems:
        expected = f"{min_elems}" if min_elems == max_elems else f"{min_elems} or {max_elems}"
        raise V4FramingError(f"expected {expected} list elements, got {len(value)}")
    parts: list[bytes] = []
    for index, element in enumerate(value):
        if not isinstance(element, bytes):
            raise V4FramingError(f"list element {index} is not a byte string")
        parts.append(element)
    return parts


def _parse_meta(raw: bytes) -> dict[str, object]:
    if len(raw) > MAX_META_SIZE:
        raise V4FramingError("meta too large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise V4FramingError("meta is not valid UTF-8") from None
    return load_object(
        text,
        V4FramingError,
        not_json="meta is not valid JSON",
        not_object="meta is not a JSON object",
        parse_constant=_reject_constant,
    )


def _dump_json(obj: object, *, ensure_ascii: bool) -> bytes:
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=ensure_ascii, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise V4FramingError("meta is not JSON-serialisable") from None
    return text.encode("utf-8")


def parse_request(plaintext: bytes) -> V4Request:
    """Parse a decrypted v4 request plaintext.

    Raises :class:`V4FramingError` (and nothing else) when it is not a bencoded list
    of one or two byte strings, the meta is not a UTF-8 JSON object, ``endpoint`` is
    missing or not a string, or ``method`` is present but not a string.
    """
    parts = _split_list(plaintext, 1, 2)
    meta = _parse_meta(parts[0])
    endpoint = meta.get("endpoint")
    if endpoint is None:
        raise V4FramingError("meta has no endpoint")
    if not isinstance(endpoint, str):
        raise V4FramingError("meta endpoint is not a string")
    method = meta.get("method", "POST")
    if not isinstance(method, str):
        raise V4FramingError("meta method is not a string")
    body = parts[1] if len(parts) == 2 else None
    return V4Request(meta=meta, endpoint=endpoint, method=method.upper(), body=body)


def build_response(code: int, body: bytes, content_type: str = "application/json") -> bytes:
    """Build a v4 reply plaintext.

    Returns ``l<len>:{"code":<code>,"headers":{"content-type":"<type>"}}<len>:<body>e``,
    the meta compact ASCII JSON with ``code`` before ``headers``.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise V4FramingError("code is not an int")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise V4FramingError("body is not bytes")
    if not isinstance(content_type, str):
        raise V4FramingError("content type is not a string")
    meta = _dump_json({"code": code, "headers": {"content-type": content_type}}, ensure_ascii=True)
    return encode([meta, bytes(body)])


def build_request(meta: dict[str, object], body: bytes | None) -> bytes:
    """Build a v4 request plaintext (client side).

    ``meta`` must be a JSON-serialisable object with a string ``endpoint``; it is
    serialised as compact UTF-8 JSON. A ``None`` body gives a one-element list.
    """
    if not isinstance(meta, dict):
        raise V4FramingError("meta is not a dict")
    if not all(isinstance(key, str) for key in meta):
        raise V4FramingError("meta keys are not all strings")
    if not isinstance(meta.get("endpoint"), str):
        raise V4FramingError("meta endpoint is missing or not a string")
    method = meta.get("method")
    if method is not None and not isinstance(method, str):
        raise V4FramingError("meta method is not a string")
    raw_meta = _dump_json(meta, ensure_ascii=False)
    if len(raw_meta) > MAX_META_SIZE:
        raise V4FramingError("meta too large")
    parts: list[bytes] = [raw_meta]
    if body is not None:
        if not isinstance(body, bytes | bytearray | memoryview):
            raise V4FramingError("body is not bytes")
        parts.append(bytes(body))
    data = encode(parts)
    if len(data) > MAX_PLAINTEXT_SIZE:
        raise V4FramingError("payload too large")
    return data


def parse_response(data: bytes) -> tuple[dict[str, object], bytes]:
    """Parse a decrypted v4 reply plaintext (client side); return ``(meta, body)``.

    Strict: exactly two byte strings; the meta a JSON object with an int ``code`` and
    a ``headers`` object whose values are all strings, including ``content-type``.
    """
    parts = _split_list(data, 2, 2)
    meta = _parse_meta(parts[0])
    code = meta.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        raise V4FramingError("meta code is missing or not an int")
    headers = meta.get("headers")
    if not isinstance(headers, dict):
        raise V4FramingError("meta headers are missing or not an object")
    if not all(isinstance(value, str) for value in headers.values()):
        raise V4FramingError("meta header value is not a string")
    if "content-type" not in headers:
        raise V4FramingError("meta headers have no content-type")
    return meta, parts[1]
