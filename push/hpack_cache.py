"""HPACK for a connection that sends the same headers again and again, and gets the same back.

Once a header list is in the dynamic table, HPACK encodes it to the same few index bytes every
time, and those bytes decode to the same list, for as long as the table does not change. These
coders remember their last block and reuse it while the table is unchanged (a counter of table
changes: entries added, size changed), which saved the relay's FCM connection most of its
HPACK work (bench/push_bench.py). Literals are never Huffman-coded (CPU for ~30% of header bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder
from hpack.table import HeaderTable


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

    def encode(self, headers: Iterable[Any], huffman: bool = False) -> bytes:
        headers = list(headers)
        table = self.header_table
        assert isinstance(table, CountingTable)
        if headers == self._headers and table.changes == self._version:
            return self._block
        before, resized = table.changes, table.resized  # resized: a size update goes first
        block = bytes(super().encode(headers, huffman=False))
        if table.changes == before and not resized:  # all indexed: the same bytes next time
            self._headers, self._block, self._version = headers, block, before
        return block


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
        before = table.changes
        headers = list(super().decode(data, raw))
        if raw and table.changes == before:
            self._block, self._headers, self._version = bytes(data), headers, before
        return list(headers)
