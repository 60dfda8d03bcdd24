"""Build a word-level Hugging Face tokenizer folder for benchmark clients, offline.

    python bench/make_tokenizer.py ./local-tokenizer        # needs: pip install tokenizers

inference-perf, guidellm and aiperf count tokens with a Hugging Face tokenizer and load it with
``AutoTokenizer.from_pretrained(path)``; nothing can be fetched from a hub here, so this builds one.

It is word-level on purpose. inference-perf makes a prompt of exactly N tokens by drawing N random
token ids, decoding them to text, counting the text's tokens and adding or removing ids until the
count is N (a bounded number of tries). With a byte-level BPE the decoded text re-tokenizes into a
different number of tokens, often never N ("Could not generate a prompt of exactly 2000 tokens").
Here every vocabulary entry is one alphanumeric word and the pre-tokenizer splits on whitespace and
punctuation, so decoding any ids joins their words with spaces and encoding that text gives the same
ids back: the count is exact on the first try, and a prefix joined by a space adds its own count.
Text from elsewhere (guidellm's corpus) still counts one token per word or punctuation mark; words
outside the vocabulary become ``[UNK]``.

The vocabulary is 32,000 made-up words of two or three syllables (deterministic, no corpus), about
the size of Llama 2's, plus single punctuation marks. Counts are not Llama's: use the servers'
``usage`` for token totals.

guidellm is different: it makes a prompt of N tokens by encoding English text from Faker, keeping
N ids and decoding them, and decoding drops ``[UNK]``; with made-up words only, a "512-token" prompt
keeps ~50 words. ``--words-from-faker`` (in a venv with Faker, which guidellm installs) adds Faker's
English word list, capitalised too, so that text keeps its words and N tokens are N words or marks.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

__all__ = ["PUNCTUATION", "SPECIAL_TOKENS", "VOCAB_SIZE", "build", "faker_words", "vocabulary"]

VOCAB_SIZE = 32_000
SPECIAL_TOKENS = ("[UNK]", "<|begin_of_text|>", "<|eot_id|>")
#: Single marks, one token each (the pre-tokenizer splits a run of marks into a run token, which
#: decoded single marks never form: they are joined by spaces).
PUNCTUATION = tuple(".,;:!?'\"()-")
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def faker_words() -> list[str]:
    """Faker's English word list (lower-case and capitalised), read from the installed package."""
    try:
        from faker.providers.lorem.en_US import Provider  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SystemExit("--words-from-faker needs Faker in this venv (guidellm installs it)") from exc
    listed = [w for w in Provider.word_list if w.isalnum()]
    return [*listed, *(w.capitalize() for w in listed)]


def vocabulary(size: int = VOCAB_SIZE, extra: list[str] | None = None) -> list[str]:
    """``size`` distinct words: the special tokens, the punctuation marks, ``extra``, then made-up
    lowercase words."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]  # 90
    words: list[str] = list(dict.fromkeys([*SPECIAL_TOKENS, *PUNCTUATION, *(extra or [])]))[:size]
    seen = set(words)
    for length in (2, 3):
        for parts in itertools.product(syllables, repeat=length):
            if len(words) >= size:
                return words
            word = "".join(parts)
            if word not in seen:
                words.append(word)
    return words


def build(out: Path, size: int = VOCAB_SIZE, extra: list[str] | None = None) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {word: i for i, word in enumerate(vocabulary(size, extra))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    chat = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} "
        "{% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "[UNK]",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "chat_template": chat,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    specials = {"unk_token": "[UNK]", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("out", type=Path, nargs="?", default=Path("local-tokenizer"), help="folder to write")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    p.add_argument(
        "--words-from-faker",
        action="store_true",
        help="add Faker's English words (for guidellm's synthetic prompts; needs Faker installed)",
    )
    args = p.parse_args()
    extra = faker_words() if args.words_from_faker else None
    print(f"wrote {build(args.out, args.vocab_size, extra)}")


if __name__ == "__main__":
    main()
