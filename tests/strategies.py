"""Hypothesis strategies for what a client may send, shared by the fuzz tests.

The parsers' own inputs (JSON-like text, v2 and v4 requests, bencode of every shape), each
endpoint's parameters valid and hostile, the statistics body and the Basic authorization
header; and `mutate`, the one small random edit the bencode and v4 framing tests apply.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

from handlers.endpoints import ENDPOINTS
from lsrpc import bencode, v4

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


# -- v2 and v4 requests inside the hop encryption -----------------------------------------


v2_requests = st.builds(
    lambda endpoint, body, extra: json.dumps({**extra, "endpoint": endpoint, "body": body}),
    json_values,
    json_values | json_like.map(lambda raw: raw.decode("utf-8", "replace")),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
).map(str.encode)


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
        st.lists(
            bencode_values.map(bencode.encode) | st.sampled_from(NON_CANONICAL), max_size=3
        ).map(b"".join),
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


# -- small random edits of valid bytes ---------------------------------------------------------

INTERESTING = b'0123456789:-ildeLx{}[]",\\ \x00\xff'


def mutate(data: bytes, op: int, pos: int, chunk: bytes) -> bytes:
    """Apply one small edit to ``data``: flip, insert, delete, truncate or repeat."""
    i = pos % (len(data) + 1)
    if op == 0 and i < len(data):  # overwrite one byte
        return data[:i] + chunk[:1] + data[i + 1 :]
    if op == 1:  # insert a few bytes
        return data[:i] + chunk + data[i:]
    if op == 2:  # delete a few bytes
        return data[:i] + data[i + len(chunk) :]
    if op == 3:  # truncate
        return data[:i]
    return data[:i] + data  # repeat a prefix


chunks = st.binary(min_size=1, max_size=4) | st.lists(
    st.sampled_from(list(INTERESTING)), min_size=1, max_size=4
).map(bytes)
