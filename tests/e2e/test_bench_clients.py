"""docs/bench.md's recipes for the ecosystem's benchmark clients, run through the clients themselves.

The clients do not fit infergate's development venv (inference-perf 0.7 needs Python >= 3.12 and
~790 MB; guidellm 0.8.1 needs torch), so they live in venvs of their own: ``bash
bench/install_clients.sh`` makes them and prints the two variables these tests read
(``INFERGATE_INFERENCE_PERF``, ``INFERGATE_GUIDELLM``; otherwise the commands on PATH). A test
whose client is absent is skipped with that reason, which ``-ra`` prints.

What runs is the documentation's text: the YAML and the shell lines are taken from docs/bench.md,
with only the URL, the load (one short stage) and the tokenizer folder substituted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import ChildProcess, free_port, start_infergate

ROOT = Path(__file__).resolve().parents[2]
BENCH_DOC = (ROOT / "docs" / "bench.md").read_text()
DOC_URL = "http://127.0.0.1:8080"

pytestmark = pytest.mark.slow


def _client(variable: str, command: str) -> Path:
    """The client's executable, or skip saying how to get it."""
    found = os.environ.get(variable) or shutil.which(command)
    if not found or not Path(found).is_file():
        pytest.skip(f"{command} is not installed: bash bench/install_clients.sh, then set {variable}")
    return Path(found)


def _interpreter(executable: Path) -> str:
    """The Python of the client's venv (the console script's shebang)."""
    first = executable.read_text(errors="replace").splitlines()[0]
    assert first.startswith("#!"), first
    return first[2:].strip().split()[0]


def _tokenizer(python: str, tmp: Path, *flags: str) -> Path:
    """Build the tokenizer as the docs say: bench/make_tokenizer.py, in the client's venv."""
    out = tmp / "local-tokenizer"
    script = str(ROOT / "bench" / "make_tokenizer.py")
    subprocess.run([python, script, str(out), *flags], check=True, timeout=300)
    return out


def _guidellm_tokenizer_flags() -> list[str]:
    found = re.search(r"python bench/make_tokenizer\.py \./local-tokenizer (--words-from-faker)\n", BENCH_DOC)
    assert found is not None, "docs/bench.md builds guidellm's tokenizer with Faker's words"
    return [found.group(1)]


def _recipe_yaml() -> str:
    found = re.search(r"```yaml\n(# inference-perf\.yml.*?)```", BENCH_DOC, flags=re.S)
    assert found is not None, "docs/bench.md has the inference-perf.yml block"
    return found.group(1)


def _guidellm_command() -> str:
    found = re.search(r"```sh\n(HF_HUB_OFFLINE=1 guidellm .*?)```", BENCH_DOC, flags=re.S)
    assert found is not None, "docs/bench.md has the guidellm command"
    return found.group(1).replace("\\\n", " ")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``infergate up`` (the recipes' target), on free ports."""
    tmp = tmp_path_factory.mktemp("up")
    port, admin = free_port(), free_port()
    child: ChildProcess = start_infergate(
        ["up", "--port", str(port), "--admin-port", str(admin), "--quiet"],
        tmp,
        health_url=f"http://127.0.0.1:{admin}/readyz",
        timeout=180,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


PROMPTS = r"""
import json, sys
from inference_perf.config import read_config
from inference_perf.datagen import SharedPrefixDataGenerator
from inference_perf.utils import CustomTokenizer

config = read_config(sys.argv[1])
tokenizer = CustomTokenizer(config.tokenizer)
generator = SharedPrefixDataGenerator(config.api, config.data, tokenizer)
print(json.dumps({
    "counts": [tokenizer.count_tokens(p) for p in generator.prompts],
    "prefixes": len(set(generator.prefix_texts)),
}))
"""


@pytest.mark.timeout(900)
def test_inference_perf_makes_the_recipes_prompts_with_the_built_tokenizer(tmp_path: Path) -> None:
    """The client's own shared-prefix generator, on the recipe's config: every prompt has exactly
    system_prompt_len + question_len tokens (a BPE tokenizer fails here: "Could not generate a
    prompt of exactly 2000 tokens")."""
    python = _interpreter(_client("INFERGATE_INFERENCE_PERF", "inference-perf"))
    tok = _tokenizer(python, tmp_path)
    config = yaml.safe_load(_recipe_yaml())
    config["tokenizer"]["pretrained_model_name_or_path"] = str(tok)
    path = tmp_path / "inference-perf.yml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [python, "-c", PROMPTS, str(path)], capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shared = config["data"]["shared_prefix"]
    assert len(result["counts"]) == shared["num_groups"] * shared["num_prompts_per_group"]
    assert set(result["counts"]) == {shared["system_prompt_len"] + shared["question_len"]}
    assert result["prefixes"] == shared["num_groups"]


@pytest.mark.timeout(900)
def test_inference_perf_recipe_runs_against_infergate_up(tmp_path: Path, gateway: str) -> None:
    executable = _client("INFERGATE_INFERENCE_PERF", "inference-perf")
    tok = _tokenizer(_interpreter(executable), tmp_path)
    config = yaml.safe_load(_recipe_yaml())
    assert config["server"]["base_url"] == DOC_URL
    config["server"]["base_url"] = gateway
    config["load"]["stages"] = [{"rate": 2, "duration": 5}]
    config["tokenizer"]["pretrained_model_name_or_path"] = str(tok)
    (tmp_path / "inference-perf.yml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(executable), "-c", "inference-perf.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=800,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (summary,) = tmp_path.glob("reports-*/summary_lifecycle_metrics.json")
    report = json.loads(summary.read_text())
    assert report["failures"]["count"] == 0, report["failures"]
    assert report["successes"]["count"] == report["load_summary"]["count"] == 10


@pytest.mark.timeout(900)
def test_guidellm_recipe_runs_against_infergate_up(tmp_path: Path, gateway: str) -> None:
    executable = _client("INFERGATE_GUIDELLM", "guidellm")
    _tokenizer(_interpreter(executable), tmp_path, *_guidellm_tokenizer_flags())
    command = _guidellm_command()
    assert DOC_URL in command and "./local-tokenizer" in command
    words = shlex.split(command.replace(DOC_URL, gateway))
    env = {**os.environ}
    while "=" in words[0]:  # leading VAR=value words
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    words[0] = str(executable)
    # one short load point instead of the recipe's three one-minute ones
    words = [re.sub(r"\brate=[\d.]+", "rate=1", w) for w in words]
    words = [re.sub(r"\bseconds=\d+", "seconds=10", w) for w in words]
    at = words.index("--override")
    del words[at : at + 3]
    words += ["--output", f"kind=json,path={tmp_path / 'report.json'}"]
    done = subprocess.run(
        words, cwd=tmp_path, capture_output=True, text=True, timeout=800, env=env, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    (bench,) = report["benchmarks"]
    totals = bench["metrics"]["request_totals"]
    assert totals["successful"] > 0, totals
    # a loaded machine may make the client's own connect timeout fire; the gateway refused nothing
    errors = [(r.get("info") or {}).get("error") or "" for r in bench["requests"]["errored"]]
    assert all("Timeout" in e for e in errors), errors
    # the prompts kept their words (a tokenizer without Faker's words leaves ~50 of "512 tokens")
    words_sent = [r["input_metrics"]["text_words"] for r in bench["requests"]["successful"]]
    assert words_sent and min(words_sent) > 400, words_sent
