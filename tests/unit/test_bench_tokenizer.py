"""bench/make_tokenizer.py meets what benchmark clients ask of a tokenizer.

inference-perf makes prompts of an exact token count this way: draw that many random ids among the
tokenizer's non-special ids, decode them (skipping special tokens), count the tokens of the text, and
add or remove ids until the count matches, giving up after 20 tries; a shared prefix is joined to a
question with one space and the total must match too. This test runs that procedure on the built
tokenizer (the client itself needs Python >= 3.12), plus what AutoTokenizer reads from the folder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from bench.make_tokenizer import PUNCTUATION, SPECIAL_TOKENS, build, vocabulary
from tokenizers import Tokenizer

TRIES = 20  # inference-perf's budget


def exact_prompt(tok: Tokenizer, valid: list[int], n: int, rng: random.Random, prefix: str = "") -> str:
    ids = [rng.choice(valid) for _ in range(n)]
    for _ in range(TRIES):
        text = tok.decode(ids, skip_special_tokens=True)
        full = f"{prefix} {text}" if prefix else text
        count = len(tok.encode(full, add_special_tokens=False).ids)
        target = n + (len(tok.encode(prefix, add_special_tokens=False).ids) if prefix else 0)
        if count == target:
            return full
        if count < target:
            ids += [rng.choice(valid) for _ in range(target - count)]
        else:
            ids = ids[: len(ids) - (count - target)]
    raise AssertionError(f"no prompt of exactly {n} tokens after {TRIES} tries")


def test_random_ids_round_trip_to_exact_prompt_lengths(tmp_path: Path) -> None:
    folder = build(tmp_path / "tok")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.get_vocab_size() == len(vocabulary()) == 32_000
    specials = {tok.token_to_id(t) for t in SPECIAL_TOKENS}
    valid = [i for i in range(tok.get_vocab_size()) if i not in specials]
    rng = random.Random(0)
    for n in (1, 7, 200, 2000):
        ids = [rng.choice(valid) for _ in range(n)]
        assert tok.encode(tok.decode(ids), add_special_tokens=False).ids == ids  # first try, every time
        assert len(tok.encode(exact_prompt(tok, valid, n, rng), add_special_tokens=False).ids) == n
    system = exact_prompt(tok, valid, 2000, rng)  # the recipe's shared_prefix system_prompt_len
    question = exact_prompt(tok, valid, 200, rng, prefix=system)
    assert len(tok.encode(question, add_special_tokens=False).ids) == 2200
    # text from elsewhere (guidellm's corpus) counts one token per word or mark, never fails
    assert len(tok.encode("It is a truth universally acknowledged, that", add_special_tokens=False).ids) == 8


def test_the_folder_is_what_auto_tokenizer_reads(tmp_path: Path) -> None:
    folder = build(tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["eos_token"] in SPECIAL_TOKENS and config["unk_token"] == "[UNK]"
    assert config["clean_up_tokenization_spaces"] is False  # decode must not touch the spacing
    assert "messages" in config["chat_template"]
    assert set(json.loads((folder / "special_tokens_map.json").read_text()).values()) <= set(SPECIAL_TOKENS)


def test_extra_words_keep_english_text_through_a_decode(tmp_path: Path) -> None:
    """guidellm's way (encode text, keep N ids, decode skipping specials): out-of-vocabulary words
    vanish; words added with ``extra`` (what --words-from-faker adds) and marks survive."""
    text = "Suggest shake effort, many last prepare small. Maintain hope!"
    plain = Tokenizer.from_file(str(build(tmp_path / "plain") / "tokenizer.json"))
    words = ["suggest", "shake", "effort", "many", "last", "prepare", "small", "maintain", "hope"]
    extra = [*words, *(w.capitalize() for w in words)]
    rich = Tokenizer.from_file(str(build(tmp_path / "rich", extra=extra) / "tokenizer.json"))
    assert rich.get_vocab_size() == plain.get_vocab_size() == 32_000
    kept = rich.decode(rich.encode(text, add_special_tokens=False).ids, skip_special_tokens=True)
    assert kept.split() == [
        *["Suggest", "shake", "effort", ",", "many", "last", "prepare", "small", ".", "Maintain", "hope", "!"]
    ]
    lost = plain.decode(plain.encode(text, add_special_tokens=False).ids, skip_special_tokens=True)
    assert lost.split() == [",", ".", "hope", "!"]  # [UNK] but for one made-up word that is English
    # marks are single tokens that random ids may mix with words: still exact on the first try
    ids = [rich.token_to_id(t) for t in ("shake", *PUNCTUATION, "Hope")]
    assert None not in ids
    assert rich.encode(rich.decode([i for i in ids if i is not None]), add_special_tokens=False).ids == ids
