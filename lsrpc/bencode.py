"""Strict, bounded bencode reader and a canonical writer.

The reader accepts canonical bencode only and never raises anything but
:class:`BencodeError` on malformed input: it is iterative (no recursion), bounds
nesting depth, item count, byte-string length and digit runs, and runs in time
linear in the input size.

Value types: ``bytes``, ``int``, ``list[Value]`` and ``dict[bytes, Value]``.
"""

from __future__ import annotations

from typing import TypeAlias

from errors import ClientError

__all__ = [
    "MAX_DIGITS",
    "BencodeError",
    "Value",
    "decode",
    "encode",
]

Value: TypeAlias = "bytes | int | list[Value] | dict[bytes, Value]"

#: Longest digit run accepted in an integer or a byte-string length.
MAX_DIGITS = 20

#: Integers are encoded only if :func:`decode` would read them back.
_INT_BOUND = 10**MAX_DIGITS

#: Nesting bound for :func:`encode` (guards against cyclic structures).
_ENCODE_MAX_DEPTH = 64

_DIGIT_0 = 0x30
_DIGIT_9 = 0x39
_MINUS = 0x2D  # "-"
_COLON = 0x3A  # ":"
_INT = 0x69  # "i"
_LIST = 0x6C  # "l"
_DICT = 0x64  # "d"
_END = 0x65  # "e"


class BencodeError(ClientError, ValueError):
    """Malformed or out-of-bounds bencode.

    The message is short, fixed text (never any part of the input), so it can be
    returned to a client as is.
    """


class _ListFrame:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Value] = []


class _DictFrame:
    __slots__ = ("items", "key", "last_key")

    def __init__(self) -> None:
        self.items: dict[bytes, Value] = {}
        self.key: bytes | None = None  # key read, value pending
        self.last_key: bytes | None = None  # last completed key, for ordering


def _digit_run(data: bytes, pos: int, n: int, terminator: int, what: str) -> int:
    """The end of the ASCII digit run at ``pos``, which ``terminator`` must follow.

    Scans at most one past :data:`MAX_DIGITS`, so an overlong run is refused without being
    read to its end; `what` names the run in the errors ("integer", "string length").
    """
    end = pos
    limit = min(n, pos + MAX_DIGITS + 1)
    while end < limit and _DIGIT_0 <= data[end] <= _DIGIT_9:
        end += 1
    if end - pos > MAX_DIGITS:
        raise BencodeError(f"{what} has too many digits")
    if end >= n:
        raise BencodeError(f"truncated {what}")
    if data[end] != terminator:
        raise BencodeError(f"malformed {what}")
    return end


def _read_int(data: bytes, pos: int, n: int) -> tuple[int, int]:
    """Parse ``i<digits>e`` with ``data[pos] == ord("i")``; return (value, next pos)."""
    start = pos + 1
    digits = start
    if digits < n and data[digits] == _MINUS:
        digits += 1
    end = _digit_run(data, digits, n, _END, "integer")
    count = end - digits
    if count == 0:
        raise BencodeError("integer has no digits")
    if data[digits] == _DIGIT_0:
        if count > 1:
            raise BencodeError("integer has a leading zero")
        if digits != start:
            raise BencodeError("negative zero")
    # Only ASCII digits and an optional leading minus reach int().
    return int(data[start:end]), end + 1


def _read_bytes(data: bytes, pos: int, n: int, max_length: int) -> tuple[bytes, int]:
    """Parse ``<len>:<bytes>`` with ``data[pos]`` a digit; return (value, next pos)."""
    end = _digit_run(data, pos, n, _COLON, "string length")
    if end - pos > 1 and data[pos] == _DIGIT_0:
        raise BencodeError("string length has a leading zero")
    length = int(data[pos:end])
    if length > max_length:
        raise BencodeError("string too long")
    start = end + 1
    stop = start + length
    if stop > n:
        raise BencodeError("string overruns the input")
    return data[start:stop], stop


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_depth: int = 8,
    max_items: int = 1024,
    max_length: int | None = None,
) -> Value:
    """Decode one canonical bencoded value that spans all of ``data``.

    ``max_depth`` bounds container nesting (a top-level list is depth 1; 0 allows
    scalars only). ``max_items`` bounds the total number of values, containers,
    dict keys and scalars all counting. ``max_length`` bounds each byte string's
    length (default: ``len(data)``, i.e. only the input bounds it).

    Raises :class:`BencodeError`, and nothing else, on any malformed input.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise BencodeError("input is not bytes")
    n = len(data)
    if max_length is None:
        max_length = n
    if n == 0:
        raise BencodeError("empty input")

    stack: list[_ListFrame | _DictFrame] = []
    pos = 0
    items = 0
    value: Value

    while True:
        if pos >= n:
            raise BencodeError("truncated input")
        c = data[pos]
        top = stack[-1] if stack else None

        if c == _END and top is not None:
            stack.pop()
            pos += 1
            if isinstance(top, _DictFrame) and top.key is not None:
                raise BencodeError("dict key without a value")
            value = top.items
        else:
            if isinstance(top, _DictFrame) and top.key is None and not (_DIGIT_0 <= c <= _DIGIT_9):
                raise BencodeError("dict key is not a byte string")
            items += 1
            if items > max_items:
                raise BencodeError("too many items")
            if _DIGIT_0 <= c <= _DIGIT_9:
                value, pos = _read_bytes(data, pos, n, max_length)
            elif c == _INT:
                value, pos = _read_int(data, pos, n)
            elif c in (_LIST, _DICT):
                if len(stack) >= max_depth:
                    raise BencodeError("nesting too deep")
                stack.append(_ListFrame() if c == _LIST else _DictFrame())
                pos += 1
                continue
            else:
                raise BencodeError("unexpected byte")

        # Hand the completed value to its parent (or finish).
        if not stack:
            break
        parent = stack[-1]
        if isinstance(parent, _ListFrame):
            parent.items.append(value)
        elif parent.key is None:
            # Guaranteed bytes by the key check above.
            assert isinstance(value, bytes)
            if parent.last_key is not None and value <= parent.last_key:
                if value == parent.last_key:
                    raise BencodeError("duplicate dict key")
                raise BencodeError("dict keys not sorted")
            parent.key = value
        else:
            parent.items[parent.key] = value
            parent.last_key = parent.key
            parent.key = None

    if pos != n:
        raise BencodeError("trailing bytes after value")
    return value


def _key_bytes(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    raise BencodeError("dict key must be bytes or str")


def _encode_into(value: object, out: list[bytes], depth: int) -> None:
    if isinstance(value, bool):
        raise BencodeError("cannot encode bool")
    if isinstance(value, int):
        if abs(value) >= _INT_BOUND:
            raise BencodeError("integer too large")
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, list | tuple):
        if depth >= _ENCODE_MAX_DEPTH:
            raise BencodeError("nesting too deep")
        out.append(b"l")
        for item in value:
            _encode_into(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        if depth >= _ENCODE_MAX_DEPTH:
            raise BencodeError("nesting too deep")
        pairs = sorted(((_key_bytes(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        out.append(b"d")
        previous: bytes | None = None
        for key, item in pairs:
            if key == previous:
                raise BencodeError("duplicate dict key")
            previous = key
            out.append(b"%d:" % len(key))
            out.append(key)
            _encode_into(item, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError("cannot encode this type")


def encode(value: object) -> bytes:
    """Encode ``value`` as canonical bencode.

    Accepts ``bytes`` (also ``bytearray``/``memoryview``), ``str`` (UTF-8),
    ``int`` (not ``bool``), ``list``/``tuple`` and ``dict`` with ``bytes`` or ``str``
    keys (sorted by their byte form). Anything else raises :class:`BencodeError`.
    """
    out: list[bytes] = []
    _encode_into(value, out, 0)
    return b"".join(out)
