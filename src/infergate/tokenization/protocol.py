"""The one interface both tokenizers implement, so callers never care which is loaded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TextTokenizer(Protocol):
    """Text <-> token ids, and chat messages -> prompt text, as a vLLM server does them.

    ``bos_id`` is the token vLLM's tokenizer puts before a text prompt when special tokens are
    added (None when it adds none); ``filler_ids`` are the ids a simulated model draws its output
    from (whole common words, so generated text decodes and re-encodes to the same ids).
    """

    @property
    def bos_id(self) -> int | None: ...

    @property
    def max_token_id(self) -> int: ...

    @property
    def max_chars_per_token(self) -> int: ...

    @property
    def filler_ids(self) -> tuple[int, ...]: ...

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """Ids of ``text`` without special tokens added; ``limit`` cuts the result to that many."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens written out)."""
        ...

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text vLLM renders for chat ``messages`` (ending with an open assistant turn)."""
        ...
