"""Tests for lsrpc.v4: onion-request v4 framing (PROTOCOL.md section 5)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsrpc import v4
from lsrpc.bencode import decode, encode
from lsrpc.v4 import (
    V4FramingError,
    V4Request,
    build_request,
    build_response,
    parse_request,
    parse_response,
)
from tests.strategies import chunks, mutate

SESSION_ID = "05" + "ab" * 32
REGISTER_BODY = json.dumps({"token": "f" * 64, "pubKey": SESSION_ID}).encode()

# Request plaintexts shaped the way real clients build them.
DESKTOP_META = (
    b'{"method":"POST","endpoint":"/register","headers":{"Content-Type":"application/json"}}'
)
DESKTOP_REQUEST = (
    b"l%d:" % len(DESKTOP_META) + DESKTOP_META + b"%d:" % len(REGISTER_BODY) + REGISTER_BODY + b"e"
)


def _request(meta: bytes, body: bytes | None = None) -> bytes:
    """Hand-build ``l<len>:<meta>[<len>:<body>]e`` without going through build_request."""
    out = b"l%d:%s" % (len(meta), meta)
    if body is not None:
        out += b"%d:%s" % (len(body), body)
    return out + b"e"


def desktop_decode_v4_response(plaintext: bytes) -> tuple[dict[str, Any], Any]:
    """Parse a v4 reply the way Session Desktop's ``decodeV4Response`` does.

    Desktop works on the decoded *string*: checks the ``l`` prefix and ``e`` suffix,
    reads the meta length up to the first ``:``, JSON-parses the meta, then the body
    length up to the next ``:``, and parses the body by ``headers['content-type']``.
    """
    response = plaintext.decode("utf-8")
    assert response.startswith("l")
    assert response.endswith("e")
    first = response.index(":")
    meta_length = int(response[1:first])
    meta_start = first + 1
    meta_end = meta_start + meta_length
    metadata = json.loads(response[meta_start:meta_end])
    before_body = response.index(":", meta_end)
    body_length = int(response[meta_end:before_body])
    body_text = response[before_body + 1 : before_body + 1 + body_length]
    assert isinstance(metadata["code"], int)
    content_type = metadata["headers"]["content-type"]
    assert isinstance(content_type, str)
    body: Any = json.loads(body_text) if content_type == "application/json" else body_text
    return metadata, body


# --------------------------------------------------------------------------- build_response


def test_build_response_exact_bytes() -> None:
    reply = build_response(200, b'{"code":1,"message":"Success"}')
    assert reply == (
        b'l58:{"code":200,"headers":{"content-type":"application/json"}}'
        b'30:{"code":1,"message":"Success"}e'
    )
    assert reply.isascii()


def test_build_response_desktop_parses_it() -> None:
    reply = build_response(200, b'{"code":1,"message":"Success"}')
    metadata, body = desktop_decode_v4_response(reply)
    assert metadata == {"code": 200, "headers": {"content-type": "application/json"}}
    assert body == {"code": 1, "message": "Success"}


def test_build_response_error_code_and_other_content_type() -> None:
    reply = build_response(400, b'{"code":0,"message":"Missing token"}')
    metadata, body = desktop_decode_v4_response(reply)
    assert metadata["code"] == 400
    assert body == {"code": 0, "message": "Missing token"}
    plain = build_response(200, b"hi", content_type="text/plain; charset=utf-8")
    assert plain == (
        b'l67:{"code":200,"headers":{"content-type":"text/plain; charset=utf-8"}}2:hie'
    )
    assert parse_response(plain) == (
        {"code": 200, "headers": {"content-type": "text/plain; charset=utf-8"}},
        b"hi",
    )


def test_build_response_meta_is_ascii() -> None:
    reply = build_response(200, b"{}", content_type="application/json; x=\u00e9")
    assert reply.isascii()
    meta, _ = parse_response(reply)
    assert meta["headers"] == {"content-type": "application/json; x=\u00e9"}


def test_build_response_empty_body() -> None:
    reply = build_response(200, b"")
    assert reply.endswith(b"0:e")
    assert parse_response(reply)[1] == b""


@pytest.mark.parametrize(
    ("code", "body", "content_type"),
    [
        (True, b"{}", "application/json"),
        ("200", b"{}", "application/json"),
        (200.0, b"{}", "application/json"),
        (200, "{}", "application/json"),
        (200, None, "application/json"),
        (200, b"{}", None),
        (200, b"{}", b"application/json"),
    ],
)
def test_build_response_rejects_bad_arguments(code: Any, body: Any, content_type: Any) -> None:
    with pytest.raises(V4FramingError):
        build_response(code, body, content_type)


# --------------------------------------------------------------------------- parse_request


def test_parse_request_desktop_shape() -> None:
    request = parse_request(DESKTOP_REQUEST)
    assert request == V4Request(
        meta={
            "method": "POST",
            "endpoint": "/register",
            "headers": {"Content-Type": "application/json"},
        },
        endpoint="/register",
        method="POST",
        body=REGISTER_BODY,
    )


def test_parse_request_ios_shape() -> None:
    # iOS escapes "/" as "\/", orders keys freely and may lower-case the method.
    meta = b'{"headers":{},"endpoint":"\\/notify","method":"post"}'
    body = b'{"data":"AAAA","send_to":"' + SESSION_ID.encode() + b'"}'
    request = parse_request(_request(meta, body))
    assert request.endpoint == "/notify"
    assert request.method == "POST"
    assert request.body == body
    assert request.meta["method"] == "post"  # the meta is kept as sent


def test_parse_request_meta_with_body_key() -> None:
    # Some Desktop versions stringify the whole request info, body included, into the meta.
    meta = json.dumps(
        {"endpoint": "/unregister", "method": "POST", "body": '{"token":"x"}', "headers": {}}
    ).encode()
    request = parse_request(_request(meta, b'{"token":"x"}'))
    assert request.endpoint == "/unregister"
    assert request.body == b'{"token":"x"}'


def test_parse_request_without_body() -> None:
    request = parse_request(_request(b'{"endpoint":"/register"}'))
    assert request.body is None
    assert request.method == "POST"  # the default when the meta has none
    assert request.meta == {"endpoint": "/register"}


def test_parse_request_empty_body_and_binary_body() -> None:
    assert parse_request(_request(b'{"endpoint":"/x"}', b"")).body == b""
    binary = bytes(range(256))
    assert parse_request(_request(b'{"endpoint":"/x"}', binary)).body == binary


def test_parse_request_keeps_endpoint_as_given() -> None:
    for endpoint in ["/register", "register", "", "/a/b?c=d", "/\u00e9"]:
        meta = json.dumps({"endpoint": endpoint}).encode()
        assert parse_request(_request(meta, b"{}")).endpoint == endpoint


def test_parse_request_utf8_meta_and_any_headers() -> None:
    meta = '{"endpoint":"/r","headers":{"X":["\u00e9",1,null]},"extra":{"n":[1,2,3]}}'.encode()
    request = parse_request(_request(meta))
    assert request.meta["headers"] == {"X": ["\u00e9", 1, None]}
    meta = b'{"endpoint":"/r","headers":"not an object"}'
    assert parse_request(_request(meta)).endpoint == "/r"


def test_parse_request_accepts_bytearray() -> None:
    assert parse_request(bytearray(DESKTOP_REQUEST)).endpoint == "/register"  # type: ignore[arg-type]


DEEP_PREFIX = b'{"endpoint":"/r","x":'

BAD_REQUESTS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not bencode", b"hello"),
    ("json", b'{"endpoint":"/register"}'),
    ("byte string", b"4:spam"),
    ("int", b"i1e"),
    ("dict", b"d8:endpoint9:/registere"),
    ("empty list", b"le"),
    ("three elements", _request(b'{"endpoint":"/r"}', b"{}")[:-1] + b"0:e"),
    ("many elements", b"l" + b"0:" * 100 + b"e"),
    ("element int", b"li1ee"),
    ("second element int", _request(b'{"endpoint":"/r"}')[:-1] + b"i1ee"),
    ("element list", b"llee"),
    ("element dict", b"ldee"),
    ("second element list", _request(b'{"endpoint":"/r"}')[:-1] + b"l0:ee"),
    ("deeply nested", b"l" * 50 + b"e" * 50),
    ("unterminated", _request(b'{"endpoint":"/r"}', b"{}")[:-1]),
    ("trailing bytes", _request(b'{"endpoint":"/r"}', b"{}") + b"x"),
    ("length overruns", b'l99:{"endpoint":"/r"}e'),
    ("length huge", b"l99999999999999999999999999:e"),
    ("length leading zero", b'l017:{"endpoint":"/r"}e'),
    ("meta not utf-8", _request(b'{"endpoint":"/\xff"}')),
    ("meta utf-16", _request('{"endpoint":"/r"}'.encode("utf-16"))),
    ("meta bom", _request(b'\xef\xbb\xbf{"endpoint":"/r"}')),
    ("meta not json", _request(b"endpoint=/register")),
    ("meta empty", _request(b"")),
    ("meta truncated json", _request(b'{"endpoint":"/r"')),
    ("meta trailing json", _request(b'{"endpoint":"/r"} {}')),
    ("meta array", _request(b'["/register"]')),
    ("meta string", _request(b'"/register"')),
    ("meta number", _request(b"1")),
    ("meta null", _request(b"null")),
    ("meta nan", _request(b'{"endpoint":"/r","x":NaN}')),
    ("meta infinity", _request(b'{"endpoint":"/r","x":-Infinity}')),
    ("meta deep nesting", _request(DEEP_PREFIX + b"[" * 30_000 + b"]" * 30_000 + b"}")),
    ("meta huge int", _request(b'{"endpoint":"/r","x":' + b"9" * 5000 + b"}")),
    ("meta too large", _request(b'{"endpoint":"/r","x":"' + b"a" * 70_000 + b'"}')),
    ("endpoint missing", _request(b'{"method":"POST"}', b"{}")),
    ("endpoint null", _request(b'{"endpoint":null}', b"{}")),
    ("endpoint int", _request(b'{"endpoint":1}', b"{}")),
    ("endpoint list", _request(b'{"endpoint":["/r"]}', b"{}")),
    ("endpoint object", _request(b'{"endpoint":{}}', b"{}")),
    ("endpoint bool", _request(b'{"endpoint":true}', b"{}")),
    ("method int", _request(b'{"endpoint":"/r","method":1}', b"{}")),
    ("method null", _request(b'{"endpoint":"/r","method":null}', b"{}")),
]


@pytest.mark.parametrize("data", [b[1] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_parse_request_rejects(data: bytes) -> None:
    with pytest.raises(V4FramingError) as info:
        parse_request(data)
    assert type(info.value) is V4FramingError
    message = str(info.value)
    assert message
    assert len(message) < 100
    assert "register" not in message  # the input is never echoed


@pytest.mark.parametrize("value", ["l1:ae", None, 1, [b"{}"], object()])
def test_parse_request_non_bytes(value: Any) -> None:
    with pytest.raises(V4FramingError):
        parse_request(value)


def test_parse_request_reasons() -> None:
    def reason(data: bytes) -> str:
        with pytest.raises(V4FramingError) as info:
            parse_request(data)
        return str(info.value)

    assert "list" in reason(b"i1e")
    assert "1 or 2" in reason(b"le")
    assert "1 or 2" in reason(b"l0:0:0:e")
    assert "byte string" in reason(b"li1ee")
    assert "JSON" in reason(_request(b"nope"))
    assert "object" in reason(_request(b"[]"))
    assert "endpoint" in reason(_request(b"{}"))
    assert "endpoint" in reason(_request(b'{"endpoint":5}'))


def test_parse_request_oversized(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _request(b'{"endpoint":"/r"}', b"x" * 1000)
    assert parse_request(data).body == b"x" * 1000
    monkeypatch.setattr(v4, "MAX_PLAINTEXT_SIZE", len(data) - 1)
    with pytest.raises(V4FramingError, match="too large"):
        parse_request(data)


def test_parse_request_truncated_everywhere() -> None:
    for data in (DESKTOP_REQUEST, _request(b'{"endpoint":"/r"}')):
        parse_request(data)
        for cut in range(len(data)):
            with pytest.raises(V4FramingError):
                parse_request(data[:cut])


# --------------------------------------------------------------------------- build_request


def test_build_request_roundtrip() -> None:
    meta: dict[str, object] = {"method": "POST", "endpoint": "/register", "headers": {}}
    data = build_request(meta, REGISTER_BODY)
    assert data == _request(b'{"method":"POST","endpoint":"/register","headers":{}}', REGISTER_BODY)
    request = parse_request(data)
    assert request.meta == meta
    assert request.body == REGISTER_BODY
    one = build_request({"endpoint": "/x"}, None)
    assert one == b'l17:{"endpoint":"/x"}e'
    assert parse_request(one).body is None
    assert parse_request(build_request({"endpoint": "/x"}, b"")).body == b""


def test_build_request_utf8_meta() -> None:
    data = build_request({"endpoint": "/\u00e9"}, b"{}")
    assert '"/\u00e9"'.encode() in data
    assert parse_request(data).endpoint == "/\u00e9"


@pytest.mark.parametrize(
    ("meta", "body"),
    [
        ({}, b"{}"),
        ({"endpoint": None}, b"{}"),
        ({"endpoint": 1}, b"{}"),
        ({"endpoint": "/r", "method": 1}, b"{}"),
        ({"endpoint": "/r", 1: "x"}, b"{}"),
        ({"endpoint": "/r", "x": object()}, b"{}"),
        ({"endpoint": "/r", "x": float("nan")}, b"{}"),
        ({"endpoint": "/r", "x": b"bytes"}, b"{}"),
        ({"endpoint": "/r", "x": "a" * 70_000}, b"{}"),
        ({"endpoint": "/r"}, "{}"),
        ({"endpoint": "/r"}, 1),
        ([("endpoint", "/r")], b"{}"),
        (None, b"{}"),
    ],
)
def test_build_request_rejects(meta: Any, body: Any) -> None:
    with pytest.raises(V4FramingError):
        build_request(meta, body)


# --------------------------------------------------------------------------- parse_response


def test_parse_response_roundtrip() -> None:
    body = b'{"code":1,"message":"Success"}'
    meta, got = parse_response(build_response(200, body))
    assert meta == {"code": 200, "headers": {"content-type": "application/json"}}
    assert got == body


BAD_RESPONSES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not a list", b"4:spam"),
    ("one element", _request(b'{"code":200,"headers":{"content-type":"application/json"}}')),
    ("three elements", b"l0:0:0:e"),
    ("element not bytes", b"li200e0:e"),
    ("meta not json", _request(b"nope", b"{}")),
    ("meta not object", _request(b"[200]", b"{}")),
    ("code missing", _request(b'{"headers":{"content-type":"application/json"}}', b"{}")),
    ("code string", _request(b'{"code":"200","headers":{"content-type":"a"}}', b"{}")),
    ("code bool", _request(b'{"code":true,"headers":{"content-type":"a"}}', b"{}")),
    ("code float", _request(b'{"code":200.0,"headers":{"content-type":"a"}}', b"{}")),
    ("headers missing", _request(b'{"code":200}', b"{}")),
    ("headers list", _request(b'{"code":200,"headers":[]}', b"{}")),
    ("header value int", _request(b'{"code":200,"headers":{"content-type":"a","x":1}}', b"{}")),
    ("no content-type", _request(b'{"code":200,"headers":{}}', b"{}")),
    ("content-type null", _request(b'{"code":200,"headers":{"content-type":null}}', b"{}")),
    ("trailing", build_response(200, b"{}") + b"e"),
    ("truncated", build_response(200, b"{}")[:-1]),
]


@pytest.mark.parametrize("data", [b[1] for b in BAD_RESPONSES], ids=[b[0] for b in BAD_RESPONSES])
def test_parse_response_rejects(data: bytes) -> None:
    with pytest.raises(V4FramingError) as info:
        parse_response(data)
    assert type(info.value) is V4FramingError


def test_parse_response_truncated_everywhere() -> None:
    data = build_response(200, b'{"code":1,"message":"Success"}')
    for cut in range(len(data)):
        with pytest.raises(V4FramingError):
            parse_response(data[:cut])


# --------------------------------------------------------------------------- properties

SAMPLES = [
    DESKTOP_REQUEST,
    _request(b'{"endpoint":"/register"}'),
    _request(b'{"headers":{},"endpoint":"\\/notify","method":"post"}', b'{"data":"AA"}'),
    build_response(200, b'{"code":1,"message":"Success"}'),
    build_response(400, b'{"code":0,"message":"bad"}'),
]


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None, database=None)
def test_random_bytes_only_framing_error(data: bytes) -> None:
    for parse in (parse_request, parse_response):
        with contextlib.suppress(V4FramingError):
            parse(data)


@given(st.sampled_from(SAMPLES), st.integers(0, 4), st.integers(0, 300), chunks)
@settings(max_examples=300, deadline=None, database=None)
def test_mutations_only_framing_error(original: bytes, op: int, pos: int, chunk: bytes) -> None:
    data = mutate(original, op, pos, chunk)
    try:
        request = parse_request(data)
    except V4FramingError:
        pass
    else:
        assert isinstance(request.endpoint, str)
        assert request.body is None or isinstance(request.body, bytes)
        # Anything accepted was a canonical bencoded list.
        assert encode(decode(data)) == data
    try:
        meta, body = parse_response(data)
    except V4FramingError:
        pass
    else:
        assert isinstance(meta["code"], int)
        assert isinstance(body, bytes)


json_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=4,
)


@given(
    endpoint=st.text(max_size=30),
    method=st.none() | st.sampled_from(["POST", "post", "Get"]),
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    body=st.none() | st.binary(max_size=100),
)
@settings(max_examples=50, deadline=None, database=None)
def test_build_parse_request_property(
    endpoint: str, method: str | None, extra: dict[str, object], body: bytes | None
) -> None:
    meta: dict[str, object] = {**extra, "endpoint": endpoint}
    if method is not None:
        meta["method"] = method
    else:
        meta.pop("method", None)
    request = parse_request(build_request(meta, body))
    assert request.meta == meta
    assert request.endpoint == endpoint
    assert request.method == (method or "POST").upper()
    assert request.body == body


@given(code=st.integers(100, 599), body=st.binary(max_size=100), content_type=st.text(max_size=30))
@settings(max_examples=100, deadline=None, database=None)
def test_build_parse_response_property(code: int, body: bytes, content_type: str) -> None:
    reply = build_response(code, body, content_type)
    assert reply.startswith(b"l")
    assert reply.endswith(b"e")
    meta, got = parse_response(reply)
    assert meta == {"code": code, "headers": {"content-type": content_type}}
    assert got == body
