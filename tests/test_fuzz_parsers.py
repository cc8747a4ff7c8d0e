"""Property tests over every parser a client's bytes reach: each answers with its own error
type (a 400 or an encrypted error upstream) and never raises anything else.

Bounded to run in seconds (bencode and the v4 framing have their own in test_bencode.py and
test_v4_framing.py). Deep nesting is generated on purpose: `json.loads` raises RecursionError,
not ValueError, past Python's recursion limit (issue 12).
"""

from __future__ import annotations

import base64
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
from handlers.endpoints import ENDPOINTS, HandlerContext, Pending, handle
from handlers.reply import Reply
from handlers.validation import InvalidParameter
from lsrpc import bencode, v2, v4
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
from web.onion import parse_v2, parse_v4

FAST = settings(max_examples=200, deadline=None, database=None)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

# Text that json.loads chokes on in every way: deep nesting (RecursionError), huge numbers
# (ValueError past int's digit limit), invalid UTF-8, lone surrogates, NUL, BOMs.
OPENERS = ("[", '{"a":', '[{"b":')
deep = st.builds(
    lambda opener, depth, tail: (opener * depth + tail).encode(),
    st.sampled_from(OPENERS),
    st.integers(1, 6000),
    st.sampled_from(["", "1", "]", "}", "\x00", '"x"']),
)
nasty = st.sampled_from(
    [
        b"\x00\x00\x00\x00",
        b"1" * 5000,
        b"-" + b"9" * 4400,
        b"1e999999",
        b'"\\ud800"',
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b"[" * 100_000,
    ]
)
json_like = (
    deep | nasty | json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200)
)


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


# -- v2 and v4 requests inside the hop encryption -----------------------------------------


v2_requests = st.builds(
    lambda endpoint, body, extra: json.dumps({**extra, "endpoint": endpoint, "body": body}),
    json_values,
    json_values | json_like.map(lambda raw: raw.decode("utf-8", "replace")),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
).map(str.encode)


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


def bencoded(*parts: bytes) -> bytes:
    return b"l" + b"".join(b"%d:%s" % (len(p), p) for p in parts) + b"e"


v4_requests = st.builds(
    lambda meta, body: bencoded(meta) if body is None else bencoded(meta, body),
    json_like
    | st.builds(
        lambda endpoint, extra: json.dumps({**extra, "endpoint": endpoint}).encode(),
        json_values,
        st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    ),
    st.none() | json_like,
)


@given(v4_requests | st.binary(max_size=200))
@FAST
def test_v4_requests_and_their_bodies_raise_only_known_errors(plaintext: bytes) -> None:
    try:
        call = parse_v4(plaintext)
    except (v4.V4FramingError, v2.V2RequestError):
        return
    assert isinstance(call.params, dict)


# Bencode of every shape where the v4 plaintext is read: lists of integers, dictionaries and
# nested lists where the strings should be, non-canonical spellings, and valid requests cut,
# spliced and corrupted at random places.
bencode_values: st.SearchStrategy[bencode.Value] = st.recursive(
    st.binary(max_size=24) | st.integers(-(10**20) + 1, 10**20 - 1),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.binary(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
NON_CANONICAL = [
    b"i03e", b"i-0e", b"ie", b"i1", b"i-e", b"i" + b"9" * 25 + b"e", b"01:a", b"-1:a", b"1a",
    b"4:abc", b"99999999999999999999999:x", b"d1:b0:1:a0:e", b"d1:a0:1:a0:e", b"d1:ai1ee",
    b"di1e0:e", b"l", b"le", b"lle", b"d", b"de", b"e", b"l" * 5000, b"l0:0:0:e",
]  # fmt: skip
valid_v4 = st.sampled_from(
    [
        v4.build_request({"endpoint": "/notify", "method": "POST"}, b'{"send_to":"05","data":""}'),
        bencoded(b'{"endpoint":"/register","headers":{}}', b'{"token":"aa","pubKey":"05"}'),
        bencoded(b'{"endpoint":"register"}'),
    ]
)


def _splice(original: bytes, at: int, cut: int, insert: bytes) -> bytes:
    at %= len(original) + 1
    return original[:at] + insert + original[at + cut :]


v4_bencoded = st.one_of(
    st.lists(bencode_values, max_size=4).map(bencode.encode),
    st.builds(
        lambda meta, rest: b"l" + b"%d:%s" % (len(meta), meta) + rest + b"e",
        st.sampled_from([b'{"endpoint":"/notify"}', b"{}", b"[]"]) | json_like,
        st.lists(bencode_values.map(bencode.encode) | st.sampled_from(NON_CANONICAL), max_size=3)
        .map(b"".join),
    ),
    st.sampled_from(NON_CANONICAL),
    st.builds(
        _splice,
        valid_v4,
        st.integers(0, 200),
        st.integers(0, 8),
        st.binary(max_size=6) | st.sampled_from(NON_CANONICAL),
    ),
)


@given(v4_bencoded)
@FAST
def test_any_bencode_as_a_v4_request_raises_only_known_errors(plaintext: bytes) -> None:
    try:
        call = parse_v4(plaintext)
    except (v4.V4FramingError, v2.V2RequestError):
        return
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


# -- endpoint parameters ---------------------------------------------------------------------

PARAM_NAMES = [
    "token",
    "device",
    "pubKey",
    "send_to",
    "data",
    "closedGroupPublicKey",
    "legacyGroupPublicKeys",
]
params = st.dictionaries(
    st.sampled_from(PARAM_NAMES) | st.text(max_size=5),
    json_values
    | st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=70).map(lambda t: "05" + t)
    | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
    | st.sampled_from(["ios", "android", "huawei", "IOS", "", "\x00"]),
    max_size=6,
)


# Each endpoint's own parameters, valid to start with, then some dropped, replaced by hostile
# values or joined by others: so the validators are reached one at a time, past the first.
session_ids = st.builds(
    lambda digits, upper: "05" + (digits.upper() if upper else digits),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.booleans(),
)
apns_tokens = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
fcm_tokens = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=200
)
datas = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
VALID_PARAMS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "register": {
        "token": apns_tokens | fcm_tokens,
        "pubKey": session_ids,
        "device": st.sampled_from(["ios", "android"]),
    },
    "register_legacy_groups_only": {
        "token": apns_tokens | fcm_tokens,
        "pubKey": session_ids,
        "legacyGroupPublicKeys": st.lists(session_ids, max_size=4),
    },
    "unregister": {"token": apns_tokens | fcm_tokens},
    "subscribe_closed_group": {"closedGroupPublicKey": session_ids, "pubKey": session_ids},
    "unsubscribe_closed_group": {"closedGroupPublicKey": session_ids, "pubKey": session_ids},
    "notify": {"send_to": session_ids, "data": datas},
}
assert set(VALID_PARAMS) == set(ENDPOINTS)
hostile = (
    json_values
    | st.sampled_from(
        [
            "", "05", "05" + "g" * 64, " 05" + "a" * 64, "05" + "a" * 64 + "\n", "a" * 64,
            "a" * 63, "A" * 65, "x" * 5000, "aGk", "aGk=\n", "====", "a===", "ios", "IOS",
            "android", "huawei", "\x00", "é" * 64, "05" + "\u0660" * 64, [], {},
            ["05" + "a" * 64] * 1025,
        ]
    )
    | st.text(max_size=80)
)  # fmt: skip


@st.composite
def endpoint_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    endpoint = draw(st.sampled_from(sorted(VALID_PARAMS)))
    values: dict[str, Any] = {}
    for name, valid in VALID_PARAMS[endpoint].items():
        action = draw(st.sampled_from(["keep", "keep", "drop", "hostile"]))
        if action == "keep":
            values[name] = draw(valid)
        elif action == "hostile":
            values[name] = draw(hostile)
    values.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return endpoint, values


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


# -- the statistics body and the Basic authorization header --------------------------------

stats_bodies = json_like | st.dictionaries(
    st.sampled_from(["start_date", "end_date", "ios_pn_number", "total_message_number"])
    | st.text(max_size=6),
    json_values
    | st.text(alphabet="0123456789-: T", max_size=25)
    | st.sampled_from(["2021-5-4", "9999-12-31 23:59:59", "0001-01-01", "2021-02-30"]),
    max_size=4,
).map(lambda d: json.dumps(d).encode())


dates = st.builds(
    lambda y, mo, d, h, mi, se, sep, form: form.format(y, mo, d, h, mi, se, sep),
    st.integers(-1, 10000),
    st.integers(-1, 13),
    st.integers(-1, 32),
    st.integers(-1, 25),
    st.integers(-1, 61),
    st.integers(-1, 61),
    st.sampled_from([" ", "T", "  ", ""]),
    st.sampled_from(
        ["{0}-{1}-{2}", "{0:04d}-{1:02d}-{2:02d}{6}{3:02d}:{4:02d}:{5:02d}", "{0}-{1}-{2}{6}{3}"]
    ),
)
stats_bodies = stats_bodies | st.fixed_dictionaries(
    {},
    optional={
        "start_date": dates | json_values,
        "end_date": dates | json_values,
        "ios_pn_number": st.sampled_from([0, 1, True, False, 2, -1, 1.0, "1", None]),
        "tokens_pruned": st.sampled_from([0, 1, True, "true", [], {}]),
    },
).map(lambda d: json.dumps(d).encode())


@given(stats_bodies)
@FAST
def test_the_statistics_body_raises_only_bad_request(raw: bytes) -> None:
    try:
        query = parse_query(read_json_object(raw), now_ms=1_620_000_000_000)
    except BadRequest as exc:
        assert str(exc)
        return
    assert query.first_minute % 60_000 == 0


credentials = st.builds(
    lambda user, password, sep: f"{user}{sep}{password}".encode(),
    st.text(),
    st.text(),
    st.sampled_from([":", "", "::"]),
)
headers = st.text(max_size=80) | st.builds(
    lambda scheme, raw, pad: f"{scheme} {base64.b64encode(raw).decode()}{pad}",
    st.sampled_from(["Basic", "basic", "BASIC", "Bearer", ""]),
    credentials | st.binary(max_size=60),
    st.sampled_from(["", " ", "=", "!", "\x00"]),
)


headers = headers | st.builds(
    lambda scheme, space, raw, tail: f"{scheme}{space}{base64.b64encode(raw).decode()}{tail}",
    st.sampled_from(["Basic", "basic", " Basic", "Basic\t"]),
    st.sampled_from([" ", "  ", "\t", ""]),
    st.builds(
        lambda user, password, encoding: f"{user}:{password}".encode(encoding, "replace"),
        st.sampled_from(["stats", "", "STATS", "stats ", "é"]) | st.text(max_size=8),
        st.text(max_size=40),
        st.sampled_from(["utf-8", "latin-1", "utf-16"]),
    ),
    st.sampled_from(["", "=", "==", " ", "\x00", "\n"]),
)


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
