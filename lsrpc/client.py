"""The client side of onion requests, in the styles real Session clients send.

Used by the tests, the benchmarks and the command-line client: it builds exactly what a
service node would POST to the relay, and opens the relay's answer.

    client = OnionClient(server_public_key)
    request = client.v2("register", {"token": t, "pubKey": p}, style="ios", enc_type="xchacha20")
    status, body = request.open_v2_reply(http_response_body)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lsrpc import v4
from lsrpc.crypto import ENC_TYPE_NAMES, EncType, decrypt, derive_key, encrypt
from lsrpc.framing import build_outer

V2Style = Literal["android", "ios", "desktop"]
V2_STYLES: tuple[V2Style, ...] = ("android", "ios", "desktop")
V4Style = Literal["desktop", "ios", "libsession"]
V4_STYLES: tuple[V4Style, ...] = ("desktop", "ios", "libsession")
# What each client encrypts v4 requests with unless told otherwise.
V4_DEFAULT_ENC_TYPE: dict[V4Style, str | None] = {
    "desktop": "aes-gcm",
    "ios": "aes-gcm",
    "libsession": "xchacha20",
}


class ReplyError(Exception):
    """The relay's answer is not a well-formed reply to this request."""


def _ios_json(value: Any) -> str:
    # NSJSONSerialization escapes every "/" as "\/".
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/")


def v2_plaintext(endpoint: str, params: dict[str, Any], style: V2Style) -> bytes:
    """The decrypted v2 request as the given client builds it."""
    if style == "android":
        body = json.dumps(params, separators=(",", ":"))
        outer = {
            "body": body,
            "endpoint": endpoint,
            "method": "POST",
            "headers": {"content-type": "application/json; charset=utf-8"},
        }
        return json.dumps(outer, separators=(",", ":")).encode()
    if style == "ios":
        # Keys in another order, escaped slashes in the outer and the inner JSON alike.
        reordered = dict(reversed(list(params.items())))
        outer = {
            "headers": {"Content-Type": "application/json"},
            "method": "POST",
            "body": _ios_json(reordered),
            "endpoint": endpoint,
        }
        return _ios_json(outer).encode()
    outer = {"endpoint": endpoint, "body": json.dumps(params), "method": "post", "headers": {}}
    return json.dumps(outer).encode()


def v4_plaintext(endpoint: str, params: dict[str, Any] | None, style: V4Style) -> bytes:
    """The decrypted v4 request (a bencoded [meta, body]) as the given client builds it."""
    path = endpoint if endpoint.startswith("/") else "/" + endpoint
    body = None if params is None else json.dumps(params, separators=(",", ":")).encode()
    if style == "desktop":
        meta: dict[str, Any] = {"endpoint": path, "headers": {}, "method": "POST"}
        return v4.build_request(meta, body)
    if style == "ios":
        meta = {"method": "POST", "endpoint": path, "headers": {"Content-Type": "application/json"}}
        raw_meta = _ios_json(meta).encode()
        raw_body = None if params is None else _ios_json(params).encode()
        parts = [raw_meta] if raw_body is None else [raw_meta, raw_body]
        return b"l" + b"".join(b"%d:%s" % (len(p), p) for p in parts) + b"e"
    meta = {"endpoint": path, "headers": {"Content-Type": "application/json"}, "method": "POST"}
    raw_meta = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    parts = [raw_meta] if body is None else [raw_meta, body]
    return b"l" + b"".join(b"%d:%s" % (len(p), p) for p in parts) + b"e"


@dataclass(frozen=True)
class PreparedRequest:
    """An onion request ready to POST, and the key to open its answer."""

    body: bytes
    key: bytes
    enc_type: EncType

    def open_v2_reply(self, http_body: bytes) -> tuple[int, dict[str, Any]]:
        """The (status, body) a v2 client reads from an HTTP 200 answer."""
        try:
            result = json.loads(http_body)["result"]
            plaintext = decrypt(self.enc_type, self.key, base64.b64decode(result, validate=True))
            reply = json.loads(plaintext.decode("ascii"))
        except Exception as exc:
            raise ReplyError(f"malformed v2 reply: {type(exc).__name__}") from exc
        status, body = reply.get("status"), reply.get("body")
        if not isinstance(status, int) or not isinstance(body, dict):
            raise ReplyError("v2 reply lacks an integer status or an object body")
        return status, body

    def open_raw_reply(self, http_body: bytes) -> bytes:
        """Decrypt an answer that is raw encrypted bytes (v4)."""
        return decrypt(self.enc_type, self.key, http_body)

    def open_v4_reply(self, http_body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (meta, body) a v4 client reads: meta has `code` and string `headers`."""
        try:
            meta, body = v4.parse_response(self.open_raw_reply(http_body))
            parsed = json.loads(body)
        except Exception as exc:
            raise ReplyError(f"malformed v4 reply: {type(exc).__name__}") from exc
        if not isinstance(parsed, dict):
            raise ReplyError("v4 reply body is not a JSON object")
        return dict(meta), parsed


class OnionClient:
    def __init__(self, server_public_key: bytes) -> None:
        if len(server_public_key) != 32:
            raise ValueError("the server public key is 32 bytes")
        self.server_public_key = server_public_key
        self._server_public = X25519PublicKey.from_public_bytes(server_public_key)

    def seal(self, plaintext: bytes, enc_type: str | None = "aes-gcm") -> PreparedRequest:
        """Encrypt `plaintext` for the relay with a fresh ephemeral key and frame it."""
        kind = ENC_TYPE_NAMES[enc_type]
        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        shared = ephemeral.exchange(self._server_public)
        key = derive_key(kind, shared, ephemeral_public, self.server_public_key)
        body = build_outer(encrypt(kind, key, plaintext), ephemeral_public, enc_type)
        return PreparedRequest(body=body, key=key, enc_type=kind)

    def v4(
        self,
        endpoint: str,
        params: dict[str, Any] | None,
        *,
        style: V4Style = "desktop",
        enc_type: str | None = None,
    ) -> PreparedRequest:
        kind = V4_DEFAULT_ENC_TYPE[style] if enc_type is None else enc_type
        return self.seal(v4_plaintext(endpoint, params, style), kind)

    def v2(
        self,
        endpoint: str,
        params: dict[str, Any],
        *,
        style: V2Style = "android",
        enc_type: str | None = "aes-gcm",
    ) -> PreparedRequest:
        return self.seal(v2_plaintext(endpoint, params, style), enc_type)
