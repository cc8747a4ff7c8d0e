"""The FCM request body is byte for byte what firebase-admin's encoder and its HTTP client
(httpx: compact JSON, ensure_ascii off) would send for the same message."""

from __future__ import annotations

import base64
import json
import os
import secrets
import string
import warnings

import pytest
from firebase_admin import messaging
from httpx._content import encode_json
from hypothesis import given, settings
from hypothesis import strategies as st

from push.payloads import (
    _APS,
    APNS_MAX_PAYLOAD_BYTES,
    FCM_MAX_DATA_BYTES,
    apns_payload,
    fcm_body,
    fcm_data,
)


def firebase_admin_body(token: str, data: str) -> bytes:
    """What firebase-admin 7 sends: `_MessagingService._message_data` (validate_only absent),
    serialised by httpx's `json=`."""
    fields, _ = fcm_data(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Message.token: Session uses it
        message = messaging.Message(
            token=token, data=fields, android=messaging.AndroidConfig(priority="high")
        )
    wrapped = {"message": messaging._MessagingService.encode_message(message)}
    _, stream = encode_json(wrapped)
    return b"".join(stream)


def base64_of(size: int) -> str:
    return base64.b64encode(os.urandom(size)).decode()


FITS = FCM_MAX_DATA_BYTES - len("ENCRYPTED_DATA")  # the largest data that still goes


@pytest.mark.parametrize(
    "data",
    [
        "",
        "QUJD",
        base64_of(60),
        base64_of(300),
        base64_of(2000),
        "A" * FITS,  # exactly at the limit: still sent
        "A" * (FITS + 1),  # one byte over: trimmed (no data map at all)
        base64_of(4000),  # trimmed
    ],
    ids=["empty", "tiny", "60", "300", "2000", "at-limit", "over-by-one", "4000"],
)
def test_body_is_firebase_admins_byte_for_byte(data: str) -> None:
    token = secrets.token_urlsafe(120) + ":APA91b"
    body, trimmed = fcm_body(token, data)
    assert body == firebase_admin_body(token, data)
    assert trimmed == (len("ENCRYPTED_DATA") + len(data.encode()) > FCM_MAX_DATA_BYTES)


def test_trimmed_body_has_no_data_map() -> None:
    body, trimmed = fcm_body("tok", "A" * (FITS + 1))
    assert trimmed
    assert body == b'{"message":{"android":{"priority":"high"},"token":"tok"}}'


@pytest.mark.parametrize(
    ("token", "data"),
    [
        ('to"ken\\', "QUJD"),  # characters JSON escapes: the generic path
        ("tøken", "dätä ✓"),  # non-ASCII: kept as UTF-8, as httpx does
        ("token", "line\nbreak\t\x00"),
        ("token", "é" * 2100),  # over the limit in bytes, not in characters: trimmed
    ],
)
def test_unusual_tokens_and_data_take_the_generic_path_with_the_same_bytes(
    token: str, data: str
) -> None:
    body, _ = fcm_body(token, data)
    assert body == firebase_admin_body(token, data)


# Characters on both sides of the template's checks: those written as they are, and those
# JSON escapes or that are not ASCII.
_EDGE = '"\\\n\t\x00\x1f\x7f /+=-_:.é✓\u2028'
_TOKENS = st.text(string.ascii_letters + string.digits + "_:-." + _EDGE, min_size=1, max_size=40)
_DATA = st.text(string.ascii_letters + string.digits + "+/=" + _EDGE, max_size=60) | st.builds(
    base64_of, st.integers(0, 3100)
)


@settings(max_examples=400, deadline=None)
@given(token=_TOKENS, data=_DATA)
def test_bodies_of_generated_messages_are_firebase_admins(token: str, data: str) -> None:
    """Generated tokens and data, template path or not: firebase-admin's bytes."""
    body, trimmed = fcm_body(token, data)
    assert body == firebase_admin_body(token, data)
    assert trimmed == (len("ENCRYPTED_DATA") + len(data.encode()) > FCM_MAX_DATA_BYTES)


@settings(max_examples=300, deadline=None)
@given(data=_DATA)
def test_apns_payloads_of_generated_data_are_compact_json(data: str) -> None:
    """The APNs template against json.dumps of the same document (when it fits)."""
    body, trimmed = apns_payload(data)
    full = {"aps": _APS, "ENCRYPTED_DATA": data, "remote": 1}
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    expected = json.dumps(full, **compact).encode()  # type: ignore[arg-type]
    assert trimmed == (len(expected) > APNS_MAX_PAYLOAD_BYTES)
    if trimmed:
        expected = json.dumps({"aps": _APS, "remote": 1}, **compact).encode()  # type: ignore[arg-type]
    assert body == expected
