"""``bench/bench_dataplane.py``'s verdicts on issue #18's targets, per repetition."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support import load_bench_script


@pytest.fixture(scope="module")
def dataplane() -> ModuleType:
    return load_bench_script("bench_dataplane")


def point(path: str, rep: int, rps: float, cpu: float | None = None, c: int = 32) -> dict[str, Any]:
    p: dict[str, Any] = {"path": path, "rep": rep, "rps": rps, "concurrency": c}
    if cpu is not None:
        p["cpu_us_per_req"] = cpu
    return p


def test_each_repetition_is_judged_against_the_peer_of_the_same_repetition(dataplane: ModuleType) -> None:
    points = [
        point("sglang-router:cache_aware", 0, 1000.0, 300.0),
        point("infergate", 0, 950.0, 420.0),  # 0.95x rate, 1.40x CPU: both met
        point("sglang-router:cache_aware", 1, 2000.0, 200.0),
        point("infergate", 1, 950.0, 420.0),  # the same figures, a faster peer: both missed
        point("infergate", 0, 10.0, 9999.0, c=8),  # another concurrency is not judged
    ]
    text = dataplane.targets(points, 32)
    assert "| infergate | 0 | 950 / 1,000 = 0.95x | 420 / 300 = 1.40x | yes | yes |" in text
    assert "| infergate | 1 | 950 / 2,000 = 0.47x | 420 / 200 = 2.10x | no | no |" in text
    assert text.endswith("met: infergate: rate 1 of 2, CPU 1 of 2")


def test_the_envoy_path_is_held_to_twice_the_rate_the_issue_measured(dataplane: ModuleType) -> None:
    points = [
        point("sglang-router:cache_aware", 0, 1200.0, 250.0),
        point("infergate-envoy", 0, 1100.0, 900.0),
        point("infergate-envoy", 1, 1000.0, 900.0),  # no peer in this repetition: rate only
    ]
    text = dataplane.targets(points, 32)
    assert "| infergate-envoy | 0 | 1,100 (0.92x) | – | yes (≥ 1,048) | – |" in text
    assert "| infergate-envoy | 1 | 1,000 | – | no (≥ 1,048) | – |" in text
    assert "met: infergate-envoy: rate 1 of 2" in text


def test_nothing_to_judge_without_an_infergate_path(dataplane: ModuleType) -> None:
    assert dataplane.targets([point("sglang-router:cache_aware", 0, 1000.0, 300.0)], 32) == ""


def test_a_paced_run_says_at_what_rate_the_paths_were_compared(dataplane: ModuleType) -> None:
    points = [point("sglang-router:cache_aware", 0, 800.0, 300.0), point("infergate", 0, 799.0, 420.0)]
    assert "every path offered 800 req/s" in dataplane.targets(points, 32, 800.0)
    assert "offered" not in dataplane.targets(points, 32)


def test_paced_requests_wait_for_their_slot_and_late_ones_go_at_once(dataplane: ModuleType) -> None:
    assert dataplane.send_delay(0, 700.0, 0.0) == 0.0
    assert dataplane.send_delay(70, 700.0, 0.04) == pytest.approx(0.06)  # due at 0.1 s
    assert dataplane.send_delay(70, 700.0, 0.5) == 0.0  # behind the schedule: no wait


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "fast"])
def test_a_rate_that_is_not_a_positive_number_is_refused_by_name(dataplane: ModuleType, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--rate"):
        dataplane.positive_rate(text)
    assert dataplane.positive_rate("700") == 700.0


def test_the_request_body_carries_a_prompt_of_the_asked_length(dataplane: ModuleType) -> None:
    assert json.loads(dataplane.completion_body())["prompt"] == "Say hello."
    for chars in (1, 79, 80, 4_000, 16_001):
        body = json.loads(dataplane.completion_body(chars))
        assert len(body["prompt"]) == chars and body["max_tokens"] == 1


@pytest.mark.parametrize("text", ["-1", "many", "1.5"])
def test_a_prompt_length_that_is_not_a_whole_number_of_characters_is_refused_by_name(
    dataplane: ModuleType, text: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--prompt-chars"):
        dataplane.prompt_length(text)
    assert dataplane.prompt_length("0") == 0 and dataplane.prompt_length("4000") == 4_000


@pytest.mark.parametrize(
    "text", ["pgo", "=/usr/bin/env", "pgo=", "a,b=/usr/bin/env", "pgo=/nonexistent/python"]
)
def test_a_gateway_interpreter_is_a_label_and_an_executable_or_refused_by_name(
    dataplane: ModuleType, text: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--gateway-python"):
        dataplane.labelled_python(text)
    assert dataplane.labelled_python(f"pgo={sys.executable}") == ("pgo", sys.executable)


def test_the_gateway_interpreters_import_infergate_from_the_tree_the_script_runs(
    dataplane: ModuleType,
) -> None:
    # a --gateway-python interpreter's environment holds the dependencies only: the package must
    # come from the same tree as the rest of the run, or two versions would be compared
    import infergate

    assert (dataplane.SRC / "infergate" / "__init__.py").resolve() == Path(infergate.__file__).resolve()


def test_streamed_answers_ask_for_every_token_and_a_bad_length_is_refused(
    dataplane: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert json.loads(dataplane.completion_body()) == {
        "model": dataplane.MODEL,
        "prompt": "Say hello.",
        "max_tokens": 1,
    }
    streamed = json.loads(dataplane.completion_body(0, 64, True))
    assert (streamed["max_tokens"], streamed["stream"], streamed["ignore_eos"]) == (64, True, True)
    monkeypatch.setattr(sys, "argv", ["bench_dataplane.py", "--max-tokens", "0", "--stream"])
    with pytest.raises(SystemExit) as exited:
        dataplane.main()
    assert exited.value.code == 2 and "--max-tokens must be at least 1, not 0" in capsys.readouterr().err
