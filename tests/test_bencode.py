"""Tests for lsrpc.bencode: strict, bounded decoding and canonical encoding."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsrpc.bencode import MAX_DIGITS, BencodeError, Value, decode, encode
from tests.strategies import chunks, mutate

# --------------------------------------------------------------------------- helpers

# Canonical bencode values (what decode returns), bounded so they stay within the
# decoder's default limits (depth 8, 1024 items).
values: st.SearchStrategy[Value] = st.recursive(
    st.binary(max_size=40) | st.integers(min_value=-(10**20) + 1, max_value=10**20 - 1),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.binary(max_size=8), children, max_size=5),
    ),
    max_leaves=20,
)

COMPLEX = b'd4:bodyli0ei-42ei123456789e0:3:abcledee4:dictd1:ai1e1:bl1:xee4:meta7:{"a":1}e'


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"i0e", 0),
        (b"i1e", 1),
        (b"i-1e", -1),
        (b"i42e", 42),
        (b"i-42e", -42),
        (b"i" + b"9" * MAX_DIGITS + b"e", 10**MAX_DIGITS - 1),
        (b"i-" + b"9" * MAX_DIGITS + b"e", -(10**MAX_DIGITS) + 1),
        (b"0:", b""),
        (b"4:spam", b"spam"),
        (b"3:\x00\xffe", b"\x00\xffe"),
        (b"10:0123456789", b"0123456789"),
        (b"le", []),
        (b"de", {}),
        (b"l4:spami42ee", [b"spam", 42]),
        (b"d3:bar4:spam3:fooi42ee", {b"bar": b"spam", b"foo": 42}),
        (b"d0:i1e1:ai2ee", {b"": 1, b"a": 2}),
        (b"d1:ai1e2:aai2e1:bi3ee", {b"a": 1, b"aa": 2, b"b": 3}),
        (b"lleldeedee", [[], [{}], {}]),
        (b"d1:ad1:bl1:ceee", {b"a": {b"b": [b"c"]}}),
    ],
)
def test_decode_valid(data: bytes, expected: Value) -> None:
    assert decode(data) == expected
    assert encode(expected) == data


def test_decode_complex_roundtrip() -> None:
    value = decode(COMPLEX)
    assert isinstance(value, dict)
    assert value[b"body"] == [0, -42, 123456789, b"", b"abc", [], {}]
    assert encode(value) == COMPLEX


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert decode(bytearray(b"l1:ae")) == [b"a"]
    assert decode(memoryview(b"l1:ae")) == [b"a"]


MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    # integers
    ("int empty", b"ie"),
    ("int minus only", b"i-e"),
    ("int leading zero", b"i01e"),
    ("int leading zeros", b"i00e"),
    ("int negative leading zero", b"i-01e"),
    ("int negative zero", b"i-0e"),
    ("int double minus", b"i--1e"),
    ("int plus", b"i+1e"),
    ("int space", b"i 1e"),
    ("int underscore", b"i1_0e"),
    ("int trailing space", b"i1 e"),
    ("int hex", b"i0x1e"),
    ("int float", b"i1.0e"),
    ("int exponent", b"i1e5e"),
    ("int unicode digit", "i\u0661e".encode()),
    ("int unterminated", b"i12"),
    ("int bare", b"i"),
    ("int too many digits", b"i" + b"9" * (MAX_DIGITS + 1) + b"e"),
    ("int negative too many digits", b"i-" + b"9" * (MAX_DIGITS + 1) + b"e"),
    ("int huge digit run", b"i" + b"1" * 100_000 + b"e"),
    ("int huge digit run unterminated", b"i" + b"1" * 100_000),
    # byte strings
    ("length leading zero", b"01:a"),
    ("length leading zeros", b"00:"),
    ("length negative", b"-1:a"),
    ("length no colon", b"4spam"),
    ("length only", b"4"),
    ("length then colon only", b"4:"),
    ("length overruns", b"5:spam"),
    ("length overruns by far", b"100:spam"),
    ("length huge", b"99999999999999999999999999:"),
    ("length huge within digit bound", b"99999999999999999999:"),
    ("length huge digit run", b"1" * 100_000 + b":"),
    ("length space", b"4 :spam"),
    # structure
    ("unknown byte", b"x"),
    ("bare e", b"e"),
    ("bare colon", b":"),
    ("uppercase L", b"Le"),
    ("space", b" "),
    ("leading space", b" i1e"),
    ("list unterminated", b"l"),
    ("list unterminated after item", b"l1:a"),
    ("dict unterminated", b"d"),
    ("dict key without value", b"d1:ae"),
    ("dict key without value unterminated", b"d1:a"),
    ("dict int key", b"di1ei2ee"),
    ("dict list key", b"dlei1ee"),
    ("dict dict key", b"ddei1ee"),
    ("dict keys unsorted", b"d1:bi1e1:ai2ee"),
    ("dict keys unsorted by prefix", b"d2:aai1e1:ai2ee"),
    ("dict duplicate key", b"d1:ai1e1:ai2ee"),
    ("dict duplicate empty key", b"d0:i1e0:i2ee"),
    ("nested dict unsorted", b"ld1:bi1e1:ai2eee"),
    ("trailing byte", b"i1ex"),
    ("trailing e", b"lee"),
    ("trailing value", b"i1ei2e"),
    ("trailing string", b"0:0:"),
    ("trailing newline", b"le\n"),
    ("trailing nul", b"4:spam\x00"),
]


@pytest.mark.parametrize("data", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_decode_malformed(data: bytes) -> None:
    with pytest.raises(BencodeError) as info:
        decode(data)
    assert type(info.value) is BencodeError
    # The message never echoes the input.
    assert str(info.value)
    assert len(str(info.value)) < 80
    if len(data) >= 4:
        assert data.decode("latin-1") not in str(info.value)


@pytest.mark.parametrize("value", ["i1e", None, 1, 1.5, [b"le"], object()])
def test_decode_non_bytes(value: Any) -> None:
    with pytest.raises(BencodeError):
        decode(value)


@pytest.mark.parametrize(
    "data",
    [COMPLEX, b"l4:spami42ee", b"d3:bar4:spam3:fooi42ee", b"i-123e", b"10:0123456789"],
)
def test_decode_truncated_everywhere(data: bytes) -> None:
    decode(data)  # the whole input is valid
    for cut in range(len(data)):
        with pytest.raises(BencodeError):
            decode(data[:cut])


def test_max_depth() -> None:
    assert decode(b"l" * 8 + b"e" * 8) is not None
    with pytest.raises(BencodeError, match="deep"):
        decode(b"l" * 9 + b"e" * 9)
    assert decode(b"d1:a" * 8 + b"i0e" + b"e" * 8, max_depth=8) is not None
    with pytest.raises(BencodeError, match="deep"):
        decode(b"d1:a" * 9 + b"i0e" + b"e" * 9)
    with pytest.raises(BencodeError, match="deep"):
        decode(b"le", max_depth=0)
    assert decode(b"i1e", max_depth=0) == 1


def test_max_depth_custom() -> None:
    assert decode(b"llee", max_depth=2) == [[]]
    with pytest.raises(BencodeError):
        decode(b"llleee", max_depth=2)


@pytest.mark.parametrize(("opener", "inner"), [(b"l", b""), (b"d1:a", b"i0e")])
def test_very_deep_nesting_no_recursion_error(opener: bytes, inner: bytes) -> None:
    depth = 5_000
    data = opener * depth + inner + b"e" * depth
    with pytest.raises(BencodeError, match="deep"):
        decode(data)
    with pytest.raises(BencodeError):  # unterminated
        decode(opener * depth, max_depth=10**9, max_items=10**9)
    # With the bounds lifted it decodes iteratively: no RecursionError.
    value = decode(data, max_depth=10**9, max_items=10**9)
    assert isinstance(value, list | dict)


def test_max_items() -> None:
    # The list itself counts as one item.
    ok = b"l" + b"i0e" * 1023 + b"e"
    assert decode(ok) == [0] * 1023
    with pytest.raises(BencodeError, match="items"):
        decode(b"l" + b"i0e" * 1024 + b"e")
    # Dict keys count too.
    with pytest.raises(BencodeError, match="items"):
        decode(b"d1:ai1e1:bi2ee", max_items=4)
    assert decode(b"d1:ai1e1:bi2ee", max_items=5) == {b"a": 1, b"b": 2}
    with pytest.raises(BencodeError, match="items"):
        decode(b"l" + b"0:" * 100_000 + b"e")


def test_max_length() -> None:
    assert decode(b"5:hello", max_length=5) == b"hello"
    with pytest.raises(BencodeError, match="too long"):
        decode(b"5:hello", max_length=4)
    with pytest.raises(BencodeError, match="too long"):
        decode(b"l1:a5:helloe", max_length=4)
    # A declared length far beyond the input is refused before anything is allocated.
    with pytest.raises(BencodeError):
        decode(b"99999999999999999999:x")


def test_large_input_is_linear() -> None:
    # 1 MiB string and 1000 short keys decode quickly (no quadratic behaviour).
    big = b"1048576:" + b"x" * 1_048_576
    assert decode(big) == b"x" * 1_048_576
    keys = sorted(b"%06d" % i for i in range(1000))
    data = b"d" + b"".join(b"6:" + k + b"0:" for k in keys) + b"e"
    decoded = decode(data, max_items=2001)
    assert isinstance(decoded, dict)
    assert len(decoded) == 1000


# --------------------------------------------------------------------------- encoding


def test_encode_types() -> None:
    assert encode(b"spam") == b"4:spam"
    assert encode(bytearray(b"ab")) == b"2:ab"
    assert encode("é") == b"2:\xc3\xa9"
    assert encode(0) == b"i0e"
    assert encode(-7) == b"i-7e"
    assert encode([]) == b"le"
    assert encode(("a", 1)) == b"l1:ai1ee"
    assert encode({}) == b"de"
    assert encode({"b": 1, b"a": 2, "": [b""]}) == b"d0:l0:e1:ai2e1:bi1ee"


def test_encode_sorts_keys_bytewise() -> None:
    # Sorting is by the UTF-8 bytes, not by str order.
    value = {"\u00e9": 1, "z": 2, "Z": 3, "aa": 4, "a": 5}
    data = encode(value)
    assert data == b"d1:Zi3e1:ai5e2:aai4e1:zi2e2:\xc3\xa9i1ee"
    assert decode(data) == {k.encode(): v for k, v in value.items()}


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        1.5,
        object(),
        {1: b"x"},
        {"a": 1, b"a": 2},
        [None],
        10**MAX_DIGITS,
        -(10**MAX_DIGITS),
        pytest.param(10**5000, id="int-5000-digits"),
    ],
)
def test_encode_rejects(value: Any) -> None:
    with pytest.raises(BencodeError):
        encode(value)


def test_encode_cyclic_and_deep() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(BencodeError):
        encode(cyclic)
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(BencodeError):
        encode(deep)


# --------------------------------------------------------------------------- properties


@given(values)
@settings(max_examples=60, deadline=None, database=None)
def test_roundtrip_property(value: Value) -> None:
    data = encode(value)
    assert decode(data, max_items=10_000) == value
    assert encode(decode(data, max_items=10_000)) == data


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None, database=None)
def test_random_bytes_only_bencode_error(data: bytes) -> None:
    try:
        value = decode(data)
    except BencodeError:
        return
    # Anything accepted is canonical.
    assert encode(value) == data


TOKENS = [b"i", b"e", b"l", b"d", b"0", b"1", b"9", b":", b"-", b"x"]


@given(st.lists(st.sampled_from(TOKENS), max_size=30))
@settings(max_examples=150, deadline=None, database=None)
def test_random_tokens_only_bencode_error(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    try:
        value = decode(data, max_depth=3, max_items=10)
    except BencodeError:
        return
    assert encode(value) == data


VALID_SAMPLES = [
    COMPLEX,
    b"l4:spami42ee",
    b"d3:bar4:spam3:fooi42ee",
    b"i-123e",
    b"10:0123456789",
    b"lleldeedee",
    b"d1:ad1:bl1:ceee",
]


@given(st.sampled_from(VALID_SAMPLES), st.integers(0, 4), st.integers(0, 200), chunks)
@settings(max_examples=300, deadline=None, database=None)
def test_mutations_only_bencode_error(original: bytes, op: int, pos: int, chunk: bytes) -> None:
    mutated = mutate(original, op, pos, chunk)
    try:
        value = decode(mutated)
    except BencodeError:
        return
    assert encode(value) == mutated
