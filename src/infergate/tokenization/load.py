"""Choosing the tokenizer: the built-in one unless a ``tokenizer.json`` is given."""

from __future__ import annotations

from infergate.tokenization.builtin import Tokenizer
from infergate.tokenization.protocol import TextTokenizer


def load_tokenizer(path: str | None, *, reverse: bool = True) -> TextTokenizer:
    """The built-in tokenizer for ``None``, else the HuggingFace tokenizer at ``path`` (a
    ``tokenizer.json`` or a directory holding one). ``reverse`` is the built-in tokenizer's option
    (skip the decoding table when the caller never decodes)."""
    if path is None:
        return Tokenizer(reverse=reverse)
    from infergate.tokenization.hf import HFTokenizer

    return HFTokenizer(path)
