"""A HuggingFace ``tokenizer.json`` as the simulator's and the gateway's tokenizer.

With a model's real tokenizer, prompt lengths, prefix-cache block boundaries and vLLM block hashes
are the ones a real pod computes, so a router that counts or hashes tokens can be checked token for
token. The file is read with the ``tokenizers`` library (the optional extra ``tokenizer``); nothing
is downloaded. Chat prompts are rendered as text with Llama-3.1's default template (the same text
the built-in tokenizer renders) and then tokenised, since ``tokenizer.json`` carries no template.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from infergate.tokenization.builtin import FILLER_WORDS, llama3_chat_prompt

# Llama-3's BOS: used when the tokenizer's post-processor adds no special token of its own.
_BOS_TEXT = "<|begin_of_text|>"


class TokenizerFileError(ValueError):
    """The tokenizer file cannot be used (missing, unreadable, or the library is not installed)."""


class HFTokenizer:
    """``TextTokenizer`` over a ``tokenizers.Tokenizer`` loaded from a ``tokenizer.json``."""

    def __init__(self, path: str) -> None:
        try:
            import tokenizers
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise TokenizerFileError(
                "--tokenizer needs the 'tokenizers' package: pip install 'infergate[tokenizer]'"
            ) from exc
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise TokenizerFileError(f"--tokenizer {path}: no tokenizer.json there")
        try:
            self._tok = tokenizers.Tokenizer.from_file(file)
        except Exception as exc:  # the library raises plain Exception on malformed files
            raise TokenizerFileError(f"--tokenizer {file}: not a tokenizer.json ({exc})") from exc
        self.path = file
        vocab = self._tok.get_vocab(with_added_tokens=True)
        if not vocab:
            raise TokenizerFileError(f"--tokenizer {file}: the vocabulary is empty")
        self._max_id = max(vocab.values())
        # vLLM bounds a text prompt's length in characters by max_model_len times the longest token
        self._max_chars = max(len(t) for t in vocab)
        prefix = self._tok.encode("", add_special_tokens=True).ids
        bos = prefix[0] if len(prefix) == 1 else self._tok.token_to_id(_BOS_TEXT)
        self._bos: int | None = bos
        self._filler = self._filler_ids()

    def _filler_ids(self) -> tuple[int, ...]:
        """Common words that are one token each (with their leading space), so generated text
        re-encodes to the same ids; any tokenizer splits some of them, a tiny one may split all."""
        ids: list[int] = []
        for word in FILLER_WORDS:
            enc = self.encode(" " + word)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            ids = list(dict.fromkeys(self.encode(" " + " ".join(FILLER_WORDS))))
        if not ids:
            raise TokenizerFileError(f"--tokenizer {self.path}: encodes common English words to nothing")
        return tuple(ids)

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def max_token_id(self) -> int:
        return self._max_id

    @property
    def max_chars_per_token(self) -> int:
        return self._max_chars

    @property
    def filler_ids(self) -> tuple[int, ...]:
        return self._filler

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        return ids if limit is None else ids[:limit]

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self._tok.decode(list(ids), skip_special_tokens=False)
        return text

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        return llama3_chat_prompt(messages)
