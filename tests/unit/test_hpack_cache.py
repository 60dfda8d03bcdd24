"""The picker's header-block memo answers as hpack would, whatever the peer does to its table."""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError

from infergate.servers import hpack_cache
from infergate.servers.hpack_cache import HeaderBlockDecoder

ENVOY_LIKE: list[HeaderTuple | tuple[str, str]] = [
    (":method", "POST"),
    NeverIndexedHeaderTuple(":path", "/envoy.service.ext_proc.v3.ExternalProcessor/Process"),
    (":authority", "127.0.0.1:9002"),
    ("content-type", "application/grpc"),
]


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []
    original = Decoder.decode

    def decode(self: Decoder, data: bytes, raw: bool = False) -> object:
        seen.append(bytes(data))
        return original(self, data, raw)

    monkeypatch.setattr(Decoder, "decode", decode)
    return seen


def test_a_recurring_block_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _counting(monkeypatch)
    enc, dec = Encoder(), HeaderBlockDecoder(max_header_list_size=1 << 16)
    first = dec.decode(enc.encode(ENVOY_LIKE))  # inserts :authority and content-type
    again = enc.encode(ENVOY_LIKE)  # indexes them; the path stays a literal
    assert enc.encode(ENVOY_LIKE) == again
    results = [dec.decode(again) for _ in range(5)]
    expected = {":method": "POST", ":path": ENVOY_LIKE[1][1], ":authority": "127.0.0.1:9002"}
    assert first == results[0] == {**expected, "content-type": "application/grpc"}
    assert len(seen) == 2  # the first block, and the second once


def test_an_insertion_by_the_peer_renumbers_the_table_and_is_seen() -> None:
    enc, dec = Encoder(), HeaderBlockDecoder(max_header_list_size=1 << 16)
    dec.decode(enc.encode([("x-a", "1")]))  # x-a: 1 becomes dynamic index 62
    indexed = enc.encode([("x-a", "1")])
    assert indexed == b"\xbe"
    assert dec.decode(indexed) == {"x-a": "1"}
    dec.decode(enc.encode([("x-b", "2")]))  # now 62 is x-b: 2 and x-a moved to 63
    assert dec.decode(indexed) == {"x-b": "2"}


def test_a_table_size_update_is_seen() -> None:
    enc, dec = Encoder(), HeaderBlockDecoder(max_header_list_size=1 << 16)
    dec.decode(enc.encode([("x-a", "1")]))
    assert dec.decode(b"\xbe") == {"x-a": "1"}
    assert dec.decode(b"\x20") == {}  # size 0: every dynamic entry evicted
    with pytest.raises(HPACKError):
        dec.decode(b"\xbe")


def test_blocks_that_never_recur_do_not_grow_the_memo_without_bound() -> None:
    enc, dec = Encoder(), HeaderBlockDecoder(max_header_list_size=1 << 16)
    for i in range(3 * hpack_cache._MAX_REMEMBERED):
        block = enc.encode([NeverIndexedHeaderTuple("x-request-id", f"id-{i}")])
        assert dec.decode(block) == {"x-request-id": f"id-{i}"}
        assert len(dec._memo) <= hpack_cache._MAX_REMEMBERED
