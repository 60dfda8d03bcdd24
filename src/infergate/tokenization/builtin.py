"""A deterministic stand-in tokenizer: no downloads, stable ids across processes.

Text is split into pieces with a GPT-style pre-tokenizer (words with their leading space, up to
three digits, punctuation runs, whitespace runs, Llama-3 special tokens) and long pieces are cut
into chunks of at most ``MAX_PIECE`` characters, which gives roughly 4 characters per token on
English text. A piece's id is a CRC-32 of its UTF-8 bytes folded into the Llama-3 vocabulary range,
so equal text gives equal ids in every process, and equal text prefixes give equal id prefixes
(up to the piece at the boundary), which is what prefix caching needs.

Decoding uses the instance's reverse table filled while encoding (first piece wins on an id
collision), pre-seeded with the filler vocabulary used for generated tokens; generated text
therefore re-encodes to the same ids, so multi-turn chats hit the prefix cache like real ones.
"""

from __future__ import annotations

import re
import zlib
from array import array
from collections.abc import Sequence
from typing import Any, cast

MAX_PIECE = 6
VOCAB_SIZE = 128256
_ORDINARY_LO = 1000
_ORDINARY_HI = 128000

SPECIAL_TOKENS: dict[str, int] = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
}
BOS_ID = SPECIAL_TOKENS["<|begin_of_text|>"]
EOT_ID = SPECIAL_TOKENS["<|eot_id|>"]

_PIECE_RE = re.compile(
    r"<\|[a-z_]+\|>"  # special tokens
    r"| ?[^\W\d_]+"  # words (letters) with an optional leading space
    r"| ?\d{1,3}"  # numbers, three digits at a time
    r"| ?(?:[^\s\w]|_)+"  # punctuation runs
    r"|\s+(?!\S)|\s+"  # whitespace runs
    r"|[\s\S]",  # anything left (never reached, keeps the split lossless)
)

# Filler vocabulary for generated tokens: common words with a leading space (one piece each).
_FILLER_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no will more can "
    "out up about into them some could time these two may then do first any my now such like our "
    "over man me even most made after also did many before must through back years where much your "
    "way well down should because each just those people how too little state good very make world "
    "still own see men work long get here between both life being under never day same another know "
    "while last might us great old year off come since against go came right used take three small "
    "model token cache block batch step prefix route server queue value data system point part "
    "number group large place case fact world order light water sound power house story idea"
)
# Chunked encoding (see ``Tokenizer.encode``): a space followed by a letter always starts a piece.
_BOUNDARY_RE = re.compile(r" (?=[^\W\d_])")
_CHUNK = 1024
_CHUNK_CACHE_CHARS = 16_000_000  # memo bound: ~35 MB at most
_SEEN_LIMIT = 1_000_000

FILLER_WORDS = tuple(w for w in dict.fromkeys(_FILLER_TEXT.split()) if len(w) < MAX_PIECE)


def _piece_id(piece: str) -> int:
    special = SPECIAL_TOKENS.get(piece)
    if special is not None:
        return special
    return _ORDINARY_LO + zlib.crc32(piece.encode("utf-8")) % (_ORDINARY_HI - _ORDINARY_LO)


def _mix64(x: int) -> int:
    """SplitMix64 finaliser: a cheap, well-distributed deterministic hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class Tokenizer:
    """Deterministic tokenizer shared by the engine and the HTTP server.

    Ids are a pure function of the text (shared, bounded piece cache); the reverse table used by
    ``decode`` belongs to the instance, so what one instance has seen never changes another's output.
    """

    _cache: dict[str, int] = {}  # noqa: RUF012 - deliberately process-wide (pure function memo)
    _CACHE_LIMIT = 200_000
    _REVERSE_LIMIT = 1_000_000

    _chunks: dict[str, array[int]] = {}  # noqa: RUF012 - pure memo
    _chunk_chars = 0

    def __init__(self, *, reverse: bool = True) -> None:
        """``reverse=False`` skips the reverse table (``decode`` then knows only special and filler
        tokens): for callers that never decode, like the digital twin."""
        self._track_reverse = reverse
        self._seen_chunks: set[str] = set()
        self._reverse: dict[int, str] = {tid: text for text, tid in SPECIAL_TOKENS.items()}
        ids = []
        for word in FILLER_WORDS:
            piece = " " + word
            tid = self._id(piece)
            self._reverse.setdefault(tid, piece)
            ids.append(tid)
        self._filler_ids = tuple(ids)

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def bos_id(self) -> int | None:
        """Llama-3's ``<|begin_of_text|>``, which vLLM puts before text prompts."""
        return BOS_ID

    @property
    def filler_ids(self) -> tuple[int, ...]:
        return self._filler_ids

    @property
    def max_token_id(self) -> int:
        """Largest valid token id (vLLM rejects prompt ids above it as out of vocabulary)."""
        return VOCAB_SIZE - 1

    @property
    def max_chars_per_token(self) -> int:
        """Longest piece in characters: vLLM bounds a text prompt by ``max_model_len`` times this
        before tokenising it (its value comes from the loaded tokenizer's vocabulary)."""
        return max(MAX_PIECE, *(len(s) for s in SPECIAL_TOKENS))

    @staticmethod
    def _id(piece: str) -> int:
        cache = Tokenizer._cache
        tid = cache.get(piece)
        if tid is None:
            tid = _piece_id(piece)
            if len(cache) < Tokenizer._CACHE_LIMIT:
                cache[piece] = tid
        return tid

    @staticmethod
    def pieces(text: str) -> list[str]:
        """Split ``text`` into token pieces; ``"".join(pieces(t)) == t`` always holds."""
        out: list[str] = []
        for piece in _PIECE_RE.findall(text):
            if len(piece) <= MAX_PIECE or piece in SPECIAL_TOKENS:
                out.append(piece)
            else:
                out.extend(piece[i : i + MAX_PIECE] for i in range(0, len(piece), MAX_PIECE))
        return out

    @classmethod
    def _encode_chunk(cls, chunk: str) -> tuple[array[int], list[str] | None]:
        """Ids of one chunk, memoised process-wide (a pure function of the text) as a compact
        ``array`` (~2 bytes per character with the key); the pieces too when just computed."""
        hit = cls._chunks.get(chunk)
        if hit is not None:
            return hit, None
        pieces = cls.pieces(chunk)
        found = list(map(cls._cache.get, pieces))
        if None in found:
            found = [cls._id(p) if tid is None else tid for tid, p in zip(found, pieces, strict=True)]
        ids = array("i", cast("list[int]", found))
        if cls._chunk_chars > _CHUNK_CACHE_CHARS:
            cls._chunks.clear()
            cls._chunk_chars = 0
        cls._chunks[chunk] = ids
        cls._chunk_chars += len(chunk)
        return ids, pieces

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """Token ids of ``text`` (no BOS is added; chat templates carry their own).

        ``limit`` stops after that many ids (the result is cut to it), as vLLM's tokenizer call
        truncates at ``max_model_len + 1`` so an over-long prompt costs no more than that.

        For speed the text is cut into chunks of about ``_CHUNK`` characters at positions that are
        always piece boundaries (a space followed by a letter: no piece can span one), so the
        result equals encoding the whole text at once; chunks are cut from the start, hence texts
        sharing a prefix (a tenant's system prompt, the earlier turns of a chat) share their
        leading chunks and those come from the memo instead of the regex.
        """
        ids: list[int] = []
        rev = self._reverse
        fill_rev = self._track_reverse and len(rev) < self._REVERSE_LIMIT
        seen = self._seen_chunks
        n = len(text)
        pos = 0
        while pos < n:
            m = _BOUNDARY_RE.search(text, pos + _CHUNK) if n - pos > _CHUNK else None
            end = m.start() if m is not None else n
            chunk = text[pos:end]
            pos = end
            chunk_ids, pieces = self._encode_chunk(chunk)
            ids.extend(chunk_ids)
            if fill_rev and chunk not in seen:
                # first piece wins: chunks already seen by this instance added nothing new then
                # and cannot now (the reverse table only grows)
                if pieces is None:
                    pieces = self.pieces(chunk)
                for tid, piece in zip(chunk_ids, pieces, strict=True):
                    rev.setdefault(tid, piece)
                if len(seen) < _SEEN_LIMIT:
                    seen.add(chunk)
            if limit is not None and len(ids) >= limit:
                del ids[limit:]
                break
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; ids never seen in this process decode to a stable placeholder."""
        rev = self._reverse
        return "".join(rev.get(i) or f" <{i}>" for i in ids)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        """Llama-3.1's default chat template (see ``llama3_chat_prompt``)."""
        return llama3_chat_prompt(messages)

    def filler_token(self, request_seed: int, index: int) -> int:
        """The ``index``-th generated token of a request: a common word, deterministic per seed."""
        fill = self._filler_ids
        return fill[_mix64((request_seed * 1_000_003 + index) & 0xFFFFFFFFFFFFFFFF) % len(fill)]


# What Llama-3.1-8B-Instruct's chat template writes when the request sets no ``date_string``: every
# chat prompt vLLM renders starts with this system header, so all chats share its KV blocks.
LLAMA3_DATE_STRING = "26 Jul 2024"
LLAMA3_SYSTEM_PREAMBLE = f"Cutting Knowledge Date: December 2023\nToday Date: {LLAMA3_DATE_STRING}\n\n"


def llama3_chat_prompt(messages: list[dict[str, Any]]) -> str:
    """The prompt text Llama-3.1's default template renders (no tools, generation prompt added).

    A system header always comes first, holding the knowledge-cutoff preamble and then the first
    message's content when that message is a system message; every message's content is stripped
    of surrounding whitespace (the template's ``trim``); an open assistant header ends the prompt.
    """
    system = ""
    rest = messages
    if messages and messages[0].get("role") == "system":
        system = _content_text(messages[0].get("content")).strip()
        rest = messages[1:]
    parts = [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n",
        LLAMA3_SYSTEM_PREAMBLE,
        system,
        "<|eot_id|>",
    ]
    for msg in rest:
        role = str(msg.get("role", "user"))
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n")
        parts.append(_content_text(msg.get("content")).strip())
        parts.append("<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def _content_text(content: Any) -> str:
    """Message content as text: strings as-is, OpenAI content-part lists joined by their text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
            elif isinstance(part, str):
                texts.append(part)
        return "".join(texts)
    return str(content)


def stable_hash64(*parts: int) -> int:
    """Deterministic 64-bit hash of integers (used to derive per-request seeds)."""
    h = 0
    for p in parts:
        h = _mix64(h ^ (p & 0xFFFFFFFFFFFFFFFF))
    return h
