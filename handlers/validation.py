"""Parameter validation: pure functions that name the parameter and say what is wrong."""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from typing import Any

from errors import ClientError
from push.providers import PROVIDERS, ProviderInfo
from storage.records import Provider

_SESSION_ID = re.compile(r"05[0-9a-fA-F]{64}")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

MAX_GROUPS = 1024
# `device` words of providers this server does not push to, and what a client is told
UNSUPPORTED_DEVICES = {"huawei": "Parameter device: huawei push is not supported by this server"}
PRINTABLE_ASCII_ERROR = "Parameter token must be 1 to 4096 printable ASCII characters"


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


def _normalized(token: str, providers: Sequence[ProviderInfo[Any]]) -> str:
    """Tokens of a provider that ignores case (APNs: hex) are compared in lower case; others
    (FCM) are kept verbatim."""
    ignore_case = any(info.tokens_ignore_case and info.token_valid(token) for info in providers)
    return token.lower() if ignore_case else token


def device_token(
    params: dict[str, Any], providers: Sequence[ProviderInfo[Any]] = PROVIDERS
) -> tuple[str, Provider]:
    """The token and its provider: `device` decides if given, else the first provider of the
    table that claims the token's shape."""
    token = require_str(params, "token")
    device = params.get("device")
    if device is not None and not isinstance(device, str):
        raise InvalidParameter("Parameter device must be a string")
    kind = device.lower() if device else None
    if kind in UNSUPPORTED_DEVICES:
        raise InvalidParameter(UNSUPPORTED_DEVICES[kind])
    if kind is None:
        info = next((info for info in providers if info.token_claims(token)), None)
    else:
        info = next((info for info in providers if info.device == kind), None)
        if info is None:
            words = ", ".join([*(entry.device for entry in providers), *UNSUPPORTED_DEVICES])
            raise InvalidParameter(f"Parameter device must be one of {words}")
    if info is None or not info.token_valid(token):
        raise InvalidParameter(info.shape_error if info is not None else PRINTABLE_ASCII_ERROR)
    return _normalized(token, providers), info.provider


def token_only(params: dict[str, Any], providers: Sequence[ProviderInfo[Any]] = PROVIDERS) -> str:
    """A token to forget: any shape a register could have stored."""
    token = require_str(params, "token")
    if not any(info.token_valid(token) for info in providers):
        raise InvalidParameter(PRINTABLE_ASCII_ERROR)
    return _normalized(token, providers)


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
