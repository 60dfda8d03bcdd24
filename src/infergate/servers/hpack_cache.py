"""HPACK header blocks decoded once per distinct block while the peer's table stands still.

Envoy opens one ext_proc stream per request, and after the first few every stream's header block
is the same bytes: the method, the path as a literal never indexed, and references to entries of
the dynamic table. ``hpack``'s decoder is pure Python and costs about 35 µs of the picker's CPU
per block (Huffman-decoding the path each time), ~5 % of a request through Envoy.

What a block decodes to depends only on its bytes and the decoder's dynamic table. A block that
adds no entry and changes no size leaves the table as it was, so the next identical block decodes
the same; one that does change the table (an entry inserted, evicted or the size updated) forgets
everything remembered. A change is seen from the table itself: its length, its size limit, and its
newest entry, held here by reference so that a new entry can never pass for it (``hpack`` inserts
a new tuple at the front for every addition).
"""

from __future__ import annotations

from collections.abc import Mapping

from hpack import Decoder

__all__ = ["HeaderBlockDecoder"]

_MAX_REMEMBERED = 64
"""Distinct blocks kept; a peer whose literals vary (a request id never indexed) would otherwise
grow the memo with every stream. Past this the memo starts again."""


class HeaderBlockDecoder:
    """``hpack.Decoder`` for one connection, with recurring blocks answered from memory.

    The returned mappings are shared between streams: read them, never change them.
    """

    __slots__ = ("_count", "_decoder", "_first", "_memo", "_size")

    def __init__(self, *, max_header_list_size: int) -> None:
        self._decoder = Decoder(max_header_list_size=max_header_list_size)
        self._memo: dict[bytes, Mapping[str, str]] = {}
        self._count = 0
        self._first: object = None
        self._size = self._decoder.header_table.maxsize

    def decode(self, block: bytes) -> Mapping[str, str]:
        """The block's headers (later duplicates win); raises ``hpack``'s ``HPACKError``."""
        self._check_table()
        found = self._memo.get(block)
        if found is not None:
            return found
        headers = {str(k): str(v) for k, v in self._decoder.decode(block, raw=False)}
        if self._check_table():  # the block left the table as it was
            if len(self._memo) >= _MAX_REMEMBERED:
                self._memo.clear()
            self._memo[block] = headers
        return headers

    def _check_table(self) -> bool:
        """True if the table is as when the memo was filled; else forget the memo and say False."""
        table = self._decoder.header_table
        entries = table.dynamic_entries
        first = entries[0] if entries else None
        if first is self._first and len(entries) == self._count and table.maxsize == self._size:
            return True
        self._memo.clear()
        self._first, self._count, self._size = first, len(entries), table.maxsize
        return False
