"""HPACK for a connection that sends the same headers again and again, and gets the same back.

Once a header list is in the dynamic table, HPACK encodes it to the same few index bytes every
time, and those bytes decode to the same list, for as long as the table does not change. These
coders remember their last block and reuse it while the table is unchanged (a counter of table
changes: entries added, size changed), which saved the relay's FCM connection most of its
HPACK work (bench/push_bench.py). Literals are never Huffman-coded (CPU for ~30% of header bytes).

APNs requests repeat all their fields but three (`:path` with the device token, `apns-id`,
`apns-expiration`), sent never-indexed (`hpack.NeverIndexedHeaderTuple`: they would only
crowd the table, and a device token has no business in it). For those the encoder remembers
each indexed field's bytes and each never-indexed name's prefix, learnt while the table stood
still, and assembles the block from them without searching the table (bench/sender_bench.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple, HPACKError, NeverIndexedHeaderTuple
from hpack.hpack import encode_integer
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

# A string literal's length prefix (7-bit prefix, no Huffman), for the lengths headers have.
_LENGTHS = [bytes(encode_integer(n, 7)) for n in range(1024)]


def _length(size: int) -> bytes:
    return _LENGTHS[size] if size < 1024 else bytes(encode_integer(size, 7))


class CountingTable(HeaderTable):
    """An HPACK table that counts its changes."""

    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class CachingEncoder(Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.header_table = CountingTable()
        self._headers: list[Any] | None = None
        self._block = b""
        self._version = -1
        # Learnt at table version `_learnt_at`: an indexed field's bytes, by (name, value), and
        # a never-indexed field's bytes before its value's length, by name.
        self._fields: dict[tuple[bytes, bytes], bytes] = {}
        self._prefixes: dict[bytes, bytes] = {}
        self._learnt_at = -1

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # hpack 4.2's setter, given the size the table already has, clears `resized` but keeps
        # the size changes it queued (0 then 1024, then 1024 again): it sends them with a
        # later block, after entries were added, and the peer evicts what we then index
        # (found by tests/test_hpack_cache.py). A size the table already has changes nothing.
        if value == self.header_table.maxsize:
            return
        Encoder.header_table_size.fset(self, value)  # type: ignore[attr-defined]

    def encode(self, headers: Iterable[Any], huffman: bool = False) -> bytes:
        headers = list(headers)
        table = self.header_table
        assert isinstance(table, CountingTable)
        if not table.resized:  # else a size update must go first
            if table.changes == self._version and headers == self._headers:
                return self._block
            if table.changes == self._learnt_at:
                block = self._assemble(headers)
                if block is not None:
                    return block
        before, resized = table.changes, table.resized
        block = bytes(super().encode(headers, huffman=False))
        if table.changes == before and not resized:  # all indexed: the same bytes next time
            self._headers, self._block, self._version = headers, block, before
        return block

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        table = self.header_table
        assert isinstance(table, CountingTable)
        before = table.changes
        encoded = bytes(super().add(to_add, sensitive, huffman=False))
        if table.changes == before:  # nothing added: these bytes hold while the table stands
            if self._learnt_at != before:
                self._fields, self._prefixes, self._learnt_at = {}, {}, before
            name, value = to_add
            if not sensitive:
                self._fields[to_add] = encoded  # a perfect match: its index
            elif encoded[0] & 0xF0 == 0x10 and encoded.endswith(value):  # a never-indexed literal
                self._prefixes[name] = encoded[
                    : len(encoded) - len(value) - len(_length(len(value)))
                ]
        return encoded

    def _assemble(self, headers: list[Any]) -> bytes | None:
        """The block from learnt fields, or None if one of them was never seen."""
        fields, prefixes = self._fields, self._prefixes
        parts: list[bytes] = []
        for header in headers:
            if isinstance(header, HeaderTuple) and not header.indexable:
                prefix = prefixes.get(header[0])
                value = header[1]
                if prefix is None or type(value) is not bytes:
                    return None
                parts += (prefix, _length(len(value)), value)
            else:
                field = fields.get(header)
                if field is None:
                    return None
                parts.append(field)
        return b"".join(parts)


class CachingDecoder(Decoder):
    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self.header_table = CountingTable()
        self._block: bytes | None = None
        self._headers: list[Any] = []
        self._version = -1

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table = self.header_table
        assert isinstance(table, CountingTable)
        if raw and data == self._block and table.changes == self._version:
            return list(self._headers)
        if raw:
            quick = self._decode_quickly(data)
            if quick is not None:  # the table unchanged: the same headers next time
                self._block, self._headers, self._version = bytes(data), quick, table.changes
                return list(quick)
        before = table.changes
        headers = list(super().decode(data, raw))
        if raw and table.changes == before:
            self._block, self._headers, self._version = bytes(data), headers, before
        return list(headers)

    def _decode_quickly(self, data: bytes) -> list[Any] | None:
        """A block that leaves the table as it is (indexed fields, literals not indexed),
        with short fields, read without hpack's general decoder; None: anything else (the
        general decoder then reads it from the start: nothing was changed here).

        An APNs answer is one: `:status` indexed, `apns-id` a literal never indexed.
        """
        if self.header_table_size > self.max_allowed_table_size:
            return None  # the general decoder says what is wrong
        if type(data) is not bytes:
            data = bytes(data)
        get = self.header_table.get_by_index
        headers: list[Any] = []
        size = 0
        position, end = 0, len(data)
        try:
            while position < end:
                first = data[position]
                position += 1
                if first & 0x80:  # indexed field
                    index = first & 0x7F
                    if index == 0x7F:
                        return None
                    name, value = get(index)
                    header: Any = HeaderTuple(name, value)
                elif first & 0xE0 == 0:  # literal, without indexing (0000) or never (0001)
                    index = first & 0x0F
                    if index == 0x0F:
                        return None
                    if index:
                        name = get(index)[0]
                    else:
                        name, position = _string(data, position)
                    value, position = _string(data, position)
                    header = (NeverIndexedHeaderTuple if first & 0x10 else HeaderTuple)(name, value)
                else:  # a literal to index, or a table size update
                    return None
                size += 32 + len(name) + len(value)
                if size > self.max_header_list_size:
                    return None
                headers.append(header)
        except (HPACKError, IndexError, _LongString):
            return None
        return headers


class _LongString(Exception):
    """A string whose length takes more than one byte: left to hpack's decoder."""


def _string(data: bytes, position: int) -> tuple[bytes, int]:
    """An HPACK string literal of under 127 bytes at `position`, and the position after it."""
    first = data[position]
    length = first & 0x7F
    if length == 0x7F:
        raise _LongString
    start = position + 1
    raw = data[start : start + length]
    if len(raw) != length:
        raise _LongString  # truncated: hpack's decoder says so
    return (decode_huffman(raw) if first & 0x80 else raw), start + length
