"""The shared tokenization package: both tokenizers behind one protocol, a real ``tokenizer.json``
loaded with the ``tokenizers`` library (trained here on a small corpus, nothing downloaded), the
simulator serving with it, Llama-3.1's chat template, and vLLM's block hashes as a pure function
checked against an independent computation of vLLM's scheme."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer
from infergate.tokenization.blockhash import block_hashes, lora_extra_keys, to_event_int
from infergate.tokenization.builtin import BOS_ID, SPECIAL_TOKENS, Tokenizer, llama3_chat_prompt
from infergate.tokenization.hf import HFTokenizer, TokenizerFileError
from infergate.tokenization.load import load_tokenizer
from infergate.tokenization.protocol import TextTokenizer
from infergate.tokenization.requests import chat_token_ids, completion_token_ids

FAST = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05"]
CORPUS = [
    "the cache holds the blocks of every prompt the server has seen",
    "a router picks the server whose cache holds the longest prefix of the prompt",
    "tokens are counted and hashed the same way by the gateway and the model server",
    "the quick brown fox jumps over the lazy dog while the queue grows",
] * 20


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer with Llama-3's special tokens, trained on a few sentences."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_both_tokenizers_implement_the_protocol(tokenizer_json: Path) -> None:
    assert isinstance(Tokenizer(), TextTokenizer)
    assert isinstance(load_tokenizer(None), Tokenizer)
    hf = load_tokenizer(str(tokenizer_json.parent))  # a directory holding tokenizer.json works too
    assert isinstance(hf, HFTokenizer) and isinstance(hf, TextTokenizer)


def test_hf_tokenizer_matches_the_library(tokenizer_json: Path) -> None:
    ref = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    hf = HFTokenizer(str(tokenizer_json))
    text = "the router picks the server with the longest prefix"
    assert hf.encode(text) == ref.encode(text, add_special_tokens=False).ids
    assert hf.encode(text, limit=3) == hf.encode(text)[:3]
    assert hf.decode(hf.encode(text)) == text
    assert hf.bos_id == ref.token_to_id("<|begin_of_text|>")
    assert hf.max_token_id == ref.get_vocab_size(with_added_tokens=True) - 1
    assert hf.max_chars_per_token == max(len(t) for t in ref.get_vocab(with_added_tokens=True))
    # generated filler re-encodes to the same ids (multi-turn chats hit the prefix cache)
    fill = list(hf.filler_ids[:8])
    assert fill and hf.encode(hf.decode(fill)) == fill
    # the chat template's special tokens are single tokens of this vocabulary
    prompt = hf.encode(hf.apply_chat_template([{"role": "user", "content": "hi"}]))
    assert prompt[0] == ref.token_to_id("<|begin_of_text|>")
    eot = ref.token_to_id("<|eot_id|>")
    assert eot is not None and prompt.count(eot) == 2


def test_bad_tokenizer_paths_are_errors_naming_them(tmp_path: Path) -> None:
    with pytest.raises(TokenizerFileError, match=r"no tokenizer\.json"):
        load_tokenizer(str(tmp_path / "missing"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerFileError, match=r"not a tokenizer\.json"):
        load_tokenizer(str(bad))


def test_llama31_chat_template_adds_the_default_system_preamble() -> None:
    """As Llama-3.1-8B-Instruct's template renders without tools or date_string: the system header
    always comes first with the knowledge-cutoff lines, then the (trimmed) system message."""
    plain = llama3_chat_prompt([{"role": "user", "content": " Hi there \n"}])
    assert plain == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    with_system = Tokenizer().apply_chat_template(
        [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": [{"text": "Hi"}]}]
    )
    assert with_system.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    )
    assert with_system.count("<|start_header_id|>system") == 1


# ------------------------------------------------------------------------------ block hashes


def _vllm_hashes(tokens: list[int], bs: int, serialise: Any, seed: str, extra: Any) -> list[bytes]:
    """vLLM's scheme written out from its description, independently of blockhash.py."""
    parent = hashlib.sha256(serialise(seed)).digest()
    out = []
    for i in range(0, len(tokens) - bs + 1, bs):
        parent = hashlib.sha256(serialise((parent, tuple(tokens[i : i + bs]), extra))).digest()
        out.append(parent)
    return out


def test_block_hashes_follow_vllms_scheme() -> None:
    tokens = list(range(1000, 1000 + 53))  # 3 full blocks of 16 and a partial one
    pick = lambda o: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL)  # noqa: E731
    cbor = lambda o: cbor2.dumps(o, canonical=True)  # noqa: E731
    got = block_hashes(tokens, 16)
    assert len(got) == 3 and got == _vllm_hashes(tokens, 16, pick, "vllm-none-hash", None)
    extra = lora_extra_keys("sql-lora", "/adapters/sql")
    assert block_hashes(tokens, 16, algo="sha256_cbor", seed="42", extra_keys=extra) == _vllm_hashes(
        tokens, 16, cbor, "42", extra
    )
    # a continuation from a known parent extends the chain exactly
    assert block_hashes(tokens[32:], 16, parent=got[1]) == got[2:]
    assert block_hashes(tokens[:15], 16) == []
    assert 0 <= to_event_int(got[0]) < 2**64
    with pytest.raises(ValueError, match="block_size"):
        block_hashes(tokens, 0)
    with pytest.raises(ValueError, match="sha1"):
        block_hashes(tokens, 16, algo="sha1")


# ------------------------------------------------------------------------------ simulator


@pytest.fixture
async def hf_sim(tokenizer_json: Path) -> AsyncIterator[SimServer]:
    server = SimServer(parse_args([*FAST, "--tokenizer", str(tokenizer_json)], {}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _post(url: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        return json.loads(await r.text())


async def test_simulator_serves_with_the_given_tokenizer(hf_sim: SimServer, tokenizer_json: Path) -> None:
    ref = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    bos = ref.token_to_id("<|begin_of_text|>")
    text = "the gateway and the model server count tokens the same way"
    tok = await _post(f"{hf_sim.url}/tokenize", {"prompt": text})
    assert tok["tokens"] == [bos, *ref.encode(text, add_special_tokens=False).ids]
    assert tok["tokens"][0] != BOS_ID  # not the built-in tokenizer's ids
    out = await _post(
        f"{hf_sim.url}/v1/completions",
        {"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": text, "max_tokens": 6, "ignore_eos": True},
    )
    assert out["usage"]["prompt_tokens"] == len(tok["tokens"])
    generated = ref.encode(out["choices"][0]["text"], add_special_tokens=False).ids
    assert len(generated) == 6 and set(generated) <= set(hf_sim.tokenizer.filler_ids)
    vocab_max = ref.get_vocab_size(with_added_tokens=True) - 1
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{hf_sim.url}/v1/completions",
            json={"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": [vocab_max + 1], "max_tokens": 1},
        ) as r,
    ):
        assert r.status == 400 and "out of vocabulary" in await r.text()


def test_simulator_refuses_a_bad_tokenizer_before_starting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--tokenizer"):
        SimServer(parse_args([*FAST, "--tokenizer", str(tmp_path)], {}))


COMPLETION_BODIES: list[dict[str, Any]] = [
    {"prompt": "the router picks the server"},
    {"prompt": "no bos here", "add_special_tokens": False},
    {"prompt": ["first prompt", "second prompt"]},
    {"prompt": [1000, 1001, 1002]},
]
CHAT_BODIES: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hi there"}]},
    {"messages": [{"role": "system", "content": " be brief "}, {"role": "user", "content": [{"text": "q"}]}]},
    {"messages": [{"role": "user", "content": "again"}], "add_special_tokens": True},
]


@pytest.mark.parametrize("use_hf", [False, True])
async def test_request_token_ids_agree_with_what_the_simulator_renders(
    use_hf: bool, tokenizer_json: Path
) -> None:
    """The gateway-side functions give the very ids the server computes, with either tokenizer."""
    argv = [*FAST, "--tokenizer", str(tokenizer_json)] if use_hf else FAST
    server = SimServer(parse_args(argv, {}))
    await server.start()
    tok = load_tokenizer(str(tokenizer_json) if use_hf else None)
    try:
        for body in COMPLETION_BODIES:
            rendered = await _post(f"{server.url}/v1/completions/render", body)
            assert [e["token_ids"] for e in rendered] == completion_token_ids(tok, body)
        for body in CHAT_BODIES:
            rendered = await _post(f"{server.url}/v1/chat/completions/render", body)
            assert rendered["token_ids"] == chat_token_ids(tok, body)
    finally:
        await server.stop()
