"""The bytes APNs and FCM receive (PROTOCOL.md section 6). Pure functions.

When the message data would push a payload over the provider's 4096-byte limit, the push
goes out without it: the app then shows its generic notification, which beats a push that is
refused or dropped. Callers count those (`payload_trimmed_number`).
"""

from __future__ import annotations

import json
import re
from typing import Any

APNS_MAX_PAYLOAD_BYTES = 4096
FCM_MAX_DATA_BYTES = 4096

_APS = {
    "alert": {"title": "Session", "body": "You've got a new message"},
    "badge": 1,
    "sound": "default",
    "mutable-content": 1,
    "category": "SECRET",
}


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


_APNS_WITHOUT_DATA = _compact({"aps": _APS, "remote": 1})
_APNS_PREFIX, _APNS_SUFFIX = _compact({"aps": _APS, "ENCRYPTED_DATA": "\x00", "remote": 1}).split(
    b"\\u0000"
)
# Strings JSON writes as they are (no escaping), checked by a regex: ~4x faster than a set's
# issuperset over a few hundred characters (bench/README.md).
_JSON_SAFE = re.compile(r"[A-Za-z0-9+/=]*").fullmatch


def apns_payload(data: str) -> tuple[bytes, bool]:
    """The APNs body for `data`, and whether the data had to be left out to fit."""
    if _JSON_SAFE(data):  # base64, as notify guarantees: no escaping needed
        full = _APNS_PREFIX + data.encode("ascii") + _APNS_SUFFIX
    else:
        full = _compact({"aps": _APS, "ENCRYPTED_DATA": data, "remote": 1})
    if len(full) <= APNS_MAX_PAYLOAD_BYTES:
        return full, False
    return _APNS_WITHOUT_DATA, True


def fcm_data(data: str) -> tuple[dict[str, str], bool]:
    """The FCM data map for `data`, and whether the data had to be left out to fit.

    FCM counts the keys and values of the data map against its 4096-byte limit.
    """
    size = len("ENCRYPTED_DATA") + len(data.encode())
    if size <= FCM_MAX_DATA_BYTES:
        return {"ENCRYPTED_DATA": data}, False
    return {}, True


# The FCM HTTP v1 request body is what firebase-admin's encoder makes of
# `Message(token=..., data=..., android=AndroidConfig(priority="high"))`, wrapped in
# {"message": ...} and serialised compactly (as its httpx client does): keys in the encoder's
# order, empty maps left out. tests/test_fcm_body.py compares the two byte for byte.
_FCM_HEAD = b'{"message":{"android":{"priority":"high"},'
_FCM_DATA = b'"data":{"ENCRYPTED_DATA":"'
_FCM_TOKEN = b'"token":"'
_FCM_TAIL = b'"}}'
_TOKEN_SAFE = re.compile(r"[A-Za-z0-9_:.\-]+").fullmatch


def fcm_body(token: str, data: str) -> tuple[bytes, bool]:
    """The FCM v1 `messages:send` body for `token` and `data`, and whether data was left out."""
    fields, trimmed = fcm_data(data)
    if _TOKEN_SAFE(token) and (trimmed or _JSON_SAFE(data)):
        token_part = _FCM_TOKEN + token.encode("ascii") + _FCM_TAIL
        if trimmed:
            return _FCM_HEAD + token_part, True
        return _FCM_HEAD + _FCM_DATA + data.encode("ascii") + b'"},' + token_part, False
    message: dict[str, Any] = {"android": {"priority": "high"}}
    if fields:
        message["data"] = fields
    message["token"] = token
    return _compact({"message": message}), trimmed
