"""Property tests over every parser a client's bytes reach: each answers with its own error
type (a 400 or an encrypted error upstream) and never raises anything else.

Bounded to run in seconds (bencode and the v4 framing have their own in test_bencode.py and
test_v4_framing.py). Deep nesting is generated on purpose: `json.loads` raises RecursionError,
not ValueError, past Python's recursion limit (issue 12). The strategies: tests/strategies.py.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import validation
from handlers.endpoints import HandlerContext, Pending, handle
from handlers.reply import Reply
from handlers.validation import InvalidParameter
from lsrpc import v2, v4
from lsrpc.call import ClientCall
from lsrpc.framing import FramingError, open_request, parse_outer
from lsrpc.keys import ServerKeypair
from lsrpc.paths import ONION_PATHS, canonical_path, is_onion_alias
from stats.auth import parse_basic_authorization
from stats.counters import Counters
from stats.query import BadRequest, parse_query, read_json_object
from storage.engine import create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.store import RelayStore
from storage.writer import BatchWriter
from tests.strategies import (
    PARAM_NAMES,
    bencoded,
    endpoint_calls,
    headers,
    json_like,
    params,
    stats_bodies,
    v2_requests,
    v4_bencoded,
    v4_requests,
)
from web.onion import parse_v2, parse_v4

FAST = settings(max_examples=200, deadline=None, database=None)


def frame(ciphertext: bytes, trailer: bytes) -> bytes:
    return struct.pack("<I", len(ciphertext)) + ciphertext + trailer


KEYPAIR = ServerKeypair.from_private_bytes(bytes(range(1, 33)))


# -- the outer frame -------------------------------------------------------------------------


@given(st.binary(max_size=300) | json_like.map(lambda t: b"\0\0\0\0" + t))
@FAST
def test_the_outer_frame_raises_only_framing_error(body: bytes) -> None:
    for parse in (parse_outer, lambda b: open_request(b, KEYPAIR)):
        with contextlib.suppress(FramingError):
            parse(body)


@given(st.binary(max_size=64), json_like)
@FAST
def test_any_trailer_raises_only_framing_error(ciphertext: bytes, trailer: bytes) -> None:
    with contextlib.suppress(FramingError):
        open_request(frame(ciphertext, trailer), KEYPAIR)


def test_the_issue_12_body_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="JSON trailer is not valid JSON"):
        parse_outer(b"\0\0\0\0" + b"[" * 2000)


@given(json_like | v2_requests)
@FAST
def test_v2_requests_raise_only_v2_request_error(plaintext: bytes) -> None:
    try:
        call = parse_v2(plaintext)
    except v2.V2RequestError:
        return
    assert isinstance(call.endpoint, str)
    assert isinstance(call.params, dict)


@given(json_like)
@FAST
def test_v2_params_raise_only_v2_request_error(raw: bytes) -> None:
    for value in (raw, raw.decode("utf-8", "replace")):
        with contextlib.suppress(v2.V2RequestError):
            assert isinstance(v2.parse_params(value), dict)


def v4_call_or_none(plaintext: bytes) -> ClientCall | None:
    """The v4 request read from `plaintext`, or None where parse_v4 refused it with one of its
    own errors (any other exception fails the test)."""
    try:
        return parse_v4(plaintext)
    except (v4.V4FramingError, v2.V2RequestError):
        return None


@given(v4_requests | st.binary(max_size=200))
@FAST
def test_v4_requests_and_their_bodies_raise_only_known_errors(plaintext: bytes) -> None:
    call = v4_call_or_none(plaintext)
    assert call is None or isinstance(call.params, dict)


@given(v4_bencoded)
@FAST
def test_any_bencode_as_a_v4_request_raises_only_known_errors(plaintext: bytes) -> None:
    call = v4_call_or_none(plaintext)
    if call is not None:
        assert isinstance(call.endpoint, str)
        assert isinstance(call.params, dict)


@pytest.mark.parametrize(
    ("parse", "plaintext", "error"),
    [
        (parse_v2, b"[" * 2000, "Request is not valid JSON"),
        (
            parse_v2,
            json.dumps({"endpoint": "register", "body": "[" * 2000}).encode(),
            "Request body is not valid JSON",
        ),
        (parse_v4, bencoded(b'{"endpoint":"/register"}', b"[" * 2000), "Request body is not"),
        (parse_v4, bencoded(b"[" * 2000), "meta is not valid JSON"),
    ],
)
def test_deep_nesting_is_the_same_error_as_invalid_json(
    parse: Any, plaintext: bytes, error: str
) -> None:
    with pytest.raises((v2.V2RequestError, v4.V4FramingError), match=error):
        parse(plaintext)


@pytest.fixture(scope="module")
def handler_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandlerContext]:
    """Handlers route to a real store; the operations they return are built, never run."""
    database = Path(tmp_path_factory.mktemp("fuzz")) / "relay.sqlite3"
    engine = make_engine(f"sqlite:///{database}", pool_size=1)
    create_schema(engine)
    writer = BatchWriter(engine)
    protector = IdentifierProtector(secrets.token_bytes(32), secrets.token_bytes(32))
    store = RelayStore(engine, writer, protector, lambda: 0)
    try:
        yield HandlerContext(store, Counters(), 8192, 600_000, lambda: None)
    finally:
        writer.close()
        engine.dispose()


@given(endpoint_calls())
@FAST
def test_every_endpoint_answers_its_own_parameters_with_a_reply(
    handler_context: HandlerContext, call: tuple[str, dict[str, Any]]
) -> None:
    endpoint, values = call
    outcome = handle(handler_context, endpoint, values)
    if isinstance(outcome, Reply):
        assert outcome.status == 400 and outcome.message
    else:
        assert isinstance(outcome, Pending) and outcome.name == endpoint


@given(params)
@FAST
def test_validators_raise_only_invalid_parameter(values: dict[str, Any]) -> None:
    checks = [
        lambda: validation.device_token(values),
        lambda: validation.token_only(values),
        lambda: validation.notify_data(values, 8192),
        lambda: validation.group_key_list(values, "legacyGroupPublicKeys"),
        *(lambda n=name: validation.session_id(values, n) for name in PARAM_NAMES),
    ]
    for check in checks:
        try:
            check()
        except InvalidParameter as exc:
            assert exc.message


@given(stats_bodies)
@FAST
def test_the_statistics_body_raises_only_bad_request(raw: bytes) -> None:
    try:
        query = parse_query(read_json_object(raw), now_ms=1_620_000_000_000)
    except BadRequest as exc:
        assert str(exc)
        return
    assert query.first_minute % 60_000 == 0


@given(headers)
@FAST
def test_basic_authorization_parsing_never_raises(header: str) -> None:
    parsed = parse_basic_authorization(header)
    assert parsed is None or all(isinstance(part, str) for part in parsed)


# -- onion path aliases ----------------------------------------------------------------------


def _spell(path: str, data: st.DataObject) -> str:
    """Another spelling of `path`: escaped characters, case, doubled and trailing slashes."""
    out = []
    for char in path:
        choice = data.draw(st.integers(0, 5))
        if choice == 0:
            out.append(f"%{ord(char):02X}")
        elif choice == 1:
            out.append(f"%25{ord(char):02x}")  # escaped twice
        elif choice == 2:
            out.append(char.swapcase())
        elif choice == 3 and char == "/":
            out.append("//")
        else:
            out.append(char)
    return "".join(out) + data.draw(st.sampled_from(["", "/", "//", "/.", "%2F"]))


@given(st.sampled_from(ONION_PATHS), st.data())
@FAST
def test_every_spelling_of_an_onion_path_is_an_alias(path: str, data: st.DataObject) -> None:
    spelled = _spell(path, data)
    assert canonical_path(spelled) == path.casefold()
    assert is_onion_alias(spelled) == (spelled != path)


@given(st.text(max_size=60))
@FAST
def test_alias_detection_never_raises(path: str) -> None:
    assert is_onion_alias(path) in (True, False)
    assert not is_onion_alias("/loki/v2/lsrpc")
