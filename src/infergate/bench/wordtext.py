"""The words a benchmark workload's prompts are made of: a fixed list, so no data set or tokenizer
is downloaded, one word being meant to be about one token."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["TextFn", "filler_text", "text", "text_fast"]

_WORD_TEXT = (
    "the of and to in is it you that was for on are with as his they be at one have this from or had by hot "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has "
    "look more day could go come did number sound no most people my over know water than call first "
    "who may down "
    "side been now find any new work part take get place made live where after back little only round man "
    "year came show every good me give our under name very through just form sentence great think say help "
    "low line differ turn cause much mean before move right boy old too same tell does set three want air "
    "well also play small end put home read hand port large spell add even land here must big high such"
)
_WORDS = tuple(_WORD_TEXT.split())

TextFn = Callable[[random.Random, int], str]

_FILLER_PHRASE = "the quick brown fox jumps over the lazy dog while a model serves many requests "


def filler_text(chars: int) -> str:
    """``chars`` characters of one English-like phrase repeated, the same at every call.

    The cost benchmarks (``bench/bench_proxy_hotpath.py``, ``bench_dataplane.py``,
    ``bench_prefix_index.py``) send it as the prompt to see what a prompt's length costs: every
    request carries the same text, so after the first one every prefix block matches.
    """
    return (_FILLER_PHRASE * (chars // len(_FILLER_PHRASE) + 1))[: max(chars, 0)]


def text(rng: random.Random, tokens: int) -> str:
    """``tokens`` words, each the one ``rng.choice(_WORDS)`` would pick (the published workloads'
    text): drawn as ``Random.choice`` draws, by rejection over ``getrandbits``, without its two
    method calls per word, which made generating a workload take seconds."""
    size = len(_WORDS)
    k = size.bit_length()
    bits = rng.getrandbits
    words = []
    for _ in range(tokens):
        r = bits(k)
        while r >= size:
            r = bits(k)
        words.append(_WORDS[r])
    return " ".join(words)


def text_fast(rng: random.Random, tokens: int) -> str:
    """Like :func:`text` (other words for the same seed), several times faster: for the steady
    runs' streams, which generate hundreds of thousands of prompts (the fixed lists of
    ``generate`` keep their published text)."""
    return " ".join(rng.choices(_WORDS, k=tokens))
