"""Parameter validation: pure functions that name the parameter and say what is wrong."""

from __future__ import annotations

import binascii
import re
from typing import Any

from errors import ClientError
from storage.records import Provider

_SESSION_ID = re.compile(r"05[0-9a-fA-F]{64}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]{1,4096}")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

APNS_TOKEN_LENGTHS = range(64, 201, 2)  # 32-byte tokens today; Apple says they may grow
MAX_GROUPS = 1024


class InvalidParameter(ClientError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DataTooLarge(InvalidParameter):
    """`data` is over MAX_DATA_BYTES (counted as a refusal in /metrics)."""


def require_str(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise InvalidParameter(f"Missing parameter: {name}")
    if not isinstance(value, str):
        raise InvalidParameter(f"Parameter {name} must be a string")
    return value


def session_id(params: dict[str, Any], name: str) -> str:
    value = require_str(params, name)
    if not _SESSION_ID.fullmatch(value):
        raise InvalidParameter(f"Parameter {name} must be 05 followed by 64 hex characters")
    return value.lower()


def _is_apns_token(token: str) -> bool:
    return len(token) in APNS_TOKEN_LENGTHS and all(c in "0123456789abcdefABCDEF" for c in token)


def _normalized(token: str) -> str:
    """APNs tokens are hex: compare them case-insensitively. FCM tokens are kept verbatim."""
    return token.lower() if _is_apns_token(token) else token


def device_token(params: dict[str, Any]) -> tuple[str, Provider]:
    """The token and its provider: `device` decides if given, else the token's shape."""
    token = require_str(params, "token")
    device = params.get("device")
    if device is not None and not isinstance(device, str):
        raise InvalidParameter("Parameter device must be a string")
    kind = device.lower() if device else None
    if kind == "huawei":
        raise InvalidParameter("Parameter device: huawei push is not supported by this server")
    if kind not in (None, "ios", "android"):
        raise InvalidParameter("Parameter device must be one of ios, android, huawei")
    if kind == "ios" or (kind is None and _HEX64.fullmatch(token)):
        if not _is_apns_token(token):
            raise InvalidParameter("Parameter token: an iOS token must be 64 hex characters")
        return _normalized(token), Provider.APNS
    if not _PRINTABLE_ASCII.fullmatch(token):
        raise InvalidParameter("Parameter token must be 1 to 4096 printable ASCII characters")
    return _normalized(token), Provider.FCM


def token_only(params: dict[str, Any]) -> str:
    """A token to forget: any shape a register could have stored."""
    token = require_str(params, "token")
    if not _PRINTABLE_ASCII.fullmatch(token):
        raise InvalidParameter("Parameter token must be 1 to 4096 printable ASCII characters")
    return _normalized(token)


def notify_data(params: dict[str, Any], max_bytes: int) -> str:
    value = require_str(params, "data")
    if not value:
        raise InvalidParameter("Parameter data must not be empty")
    if len(value) > (max_bytes + 2) // 3 * 4:
        raise DataTooLarge(f"Parameter data is larger than {max_bytes} bytes")
    if not _BASE64.fullmatch(value):
        raise InvalidParameter("Parameter data must be standard base64 with padding")
    try:
        decoded_length = len(binascii.a2b_base64(value, strict_mode=True))
    except binascii.Error:
        raise InvalidParameter("Parameter data must be standard base64 with padding") from None
    if decoded_length > max_bytes:
        raise DataTooLarge(f"Parameter data is larger than {max_bytes} bytes")
    return value


def group_key_list(params: dict[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if value is None:
        raise InvalidParameter(f"Missing parameter: {name}")
    if not isinstance(value, list):
        raise InvalidParameter(f"Parameter {name} must be a list")
    if len(value) > MAX_GROUPS:
        raise InvalidParameter(f"Parameter {name} has more than {MAX_GROUPS} groups")
    keys = []
    for item in value:
        if not isinstance(item, str) or not _SESSION_ID.fullmatch(item):
            raise InvalidParameter(
                f"Parameter {name}: each group key must be 05 followed by 64 hex characters"
            )
        keys.append(item.lower())
    return keys
