"""Workloads are reproducible data; statistics and reports compute what they claim."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from itertools import pairwise
from pathlib import Path

import pytest

from infergate.bench import wordtext, workloads
from infergate.bench.loadgen import RequestRecord, arrival_offsets
from infergate.bench.report import RunResult, to_markdown, write_json
from infergate.bench.stats import Slo, percentile, summarise
from infergate.bench.workloads import (
    WorkloadError,
    builtin_workloads,
    filler_text,
    generate,
    load_workload,
    stream,
)

# Virtual-time runs: CPU-bound, they cannot hang on I/O, and on a loaded 2-core machine they take
# minutes; the suite-wide 120 s hang guard would cut them short.
pytestmark = pytest.mark.timeout(900)


def test_builtin_workloads_cover_the_four_kinds() -> None:
    assert {"multi-tenant-chat", "tutorial-mix", "sharegpt-like", "bursts"} <= set(builtin_workloads())


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_prompt_text_is_the_words_random_choice_picks(seed: int) -> None:
    """The published workloads' text stays what ``rng.choice`` gave before it was drawn inline."""
    fast, reference = random.Random(seed), random.Random(seed)
    for tokens in (0, 1, 9, 400):
        expected = " ".join(reference.choice(wordtext._WORDS) for _ in range(tokens))
        assert wordtext.text(fast, tokens) == expected
    assert fast.random() == reference.random()  # and the generator is left in the same state


@pytest.mark.parametrize("name", sorted(builtin_workloads()))
def test_generation_is_deterministic(name: str) -> None:
    spec = load_workload(name)
    assert generate(spec) == generate(spec)
    other = spec.model_copy(update={"seed": spec.seed + 1})
    assert generate(other) != generate(spec)


def test_multi_tenant_sessions_share_their_tenant_prefix_and_grow() -> None:
    requests = generate(load_workload("multi-tenant-chat"))
    assert len(requests) == 200 * 3
    by_tenant: dict[str, set[str]] = {}
    for r in requests:
        assert r.messages is not None and r.messages[0]["role"] == "system"
        by_tenant.setdefault(r.group, set()).add(r.messages[0]["content"])
        assert len(r.messages[0]["content"].split()) >= 2000
    # one system prompt per tenant, and different tenants have different prompts
    assert all(len(prompts) == 1 for prompts in by_tenant.values())
    assert len({next(iter(p)) for p in by_tenant.values()}) == len(by_tenant)
    # a later turn carries the earlier question and answer
    first, later = requests[0], requests[200]
    assert later.messages is not None and first.messages is not None
    assert later.messages[: len(first.messages)] == first.messages
    assert [m["role"] for m in later.messages[-3:]] == ["user", "assistant", "user"]


def test_tutorial_mix_follows_the_model_weights() -> None:
    requests = generate(load_workload("tutorial-mix"))
    counts: dict[str, int] = {}
    for r in requests:
        counts[r.model] = counts.get(r.model, 0) + 1
    share = {m: c / len(requests) for m, c in counts.items()}
    assert share["meta-llama/Llama-3.1-8B-Instruct"] == pytest.approx(0.4, abs=0.06)
    assert share["food-review"] == pytest.approx(0.3, abs=0.06)
    assert share["legal-summarizer"] == pytest.approx(0.1, abs=0.04)


def test_lognormal_lengths_have_the_requested_mean() -> None:
    requests = generate(load_workload("sharegpt-like"))
    mean_answer = sum(r.max_tokens for r in requests) / len(requests)
    assert mean_answer == pytest.approx(200, rel=0.2)


def test_bursts_fix_their_offsets_and_poisson_fills_the_rest() -> None:
    requests = generate(load_workload("bursts"))
    offsets = arrival_offsets(requests, qps=100.0, seed=0)
    assert offsets[:32] == [0.0] * 32 and offsets[32] == 5.0
    mix = generate(load_workload("tutorial-mix"))
    times = arrival_offsets(mix, qps=10.0, seed=7)
    assert times == sorted(times)
    assert times[-1] / len(times) == pytest.approx(0.1, rel=0.15)


def test_rollout_bursts_send_each_prompt_as_a_group_of_samples() -> None:
    bursts = load_workload("bursts")
    assert isinstance(bursts.workload, workloads.BurstWorkload)
    spec = bursts.model_copy(update={"workload": bursts.workload.model_copy(update={"samples": 4})})
    for requests in (generate(spec), stream(spec, 40, seed=3)):
        groups = [requests[i : i + 4] for i in range(0, 40, 4)]
        for group in groups:
            assert len({(r.prompt, r.model, r.group) for r in group}) == 1
        # each group its own prompt; each sample its own answer length
        assert len({g[0].prompt for g in groups}) == len(groups)
        assert len({r.max_tokens for g in groups for r in g}) > len(groups)
    # one sample per prompt is the workload as it was: the same draws, in the same order
    one = bursts.model_copy(update={"workload": bursts.workload.model_copy(update={"samples": 1})})
    assert stream(one, 40, seed=3) == stream(bursts, 40, seed=3)
    assert generate(one) == generate(bursts)


def test_only_samples_of_one_prompt_are_sent_whole_again() -> None:
    """``bench_whole_prompts.py``: what a workload would meet the copy charge with."""
    from bench.bench_whole_prompts import HOLDOUT, whole_share

    assert whole_share(HOLDOUT / "rollout-groups.yaml", 400, 16) == 350 / 400  # 7 of every 8
    assert whole_share("bursts", 400, 16) == 0.0
    assert whole_share("multi-tenant-chat", 400, 16) == 0.0  # shared prefixes, never whole prompts


def test_bad_workload_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "w.yaml"
    bad.write_text("name: x\nworkload: {type: mix, requests: 0, models: [{name: m}]}\n")
    with pytest.raises(WorkloadError, match=r"w\.yaml: workload\.mix\.requests"):
        load_workload(bad)
    with pytest.raises(WorkloadError, match="no built-in workload"):
        load_workload("no-such-workload")


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0], 99) == 10.0
    assert math.isnan(percentile([], 50))


def _record(i: int, ttft: float, e2e: float, tokens: int, status: int = 200) -> RequestRecord:
    return RequestRecord(
        index=i,
        model="m",
        group="g",
        sent_at=float(i),
        status=status,
        ttft=ttft,
        e2e=e2e,
        completion_tokens=tokens,
    )


def test_summary_goodput_counts_only_requests_within_the_slo() -> None:
    records = [
        _record(0, ttft=0.5, e2e=0.5 + 0.02 * 9, tokens=10),  # meets both
        _record(1, ttft=1.5, e2e=2.0, tokens=10),  # TTFT too slow
        _record(2, ttft=0.2, e2e=0.2 + 0.1 * 9, tokens=10),  # TPOT 100 ms too slow
        _record(3, ttft=0.1, e2e=0.1, tokens=1, status=503),  # failed
    ]
    s = summarise(records, Slo(ttft_s=1.0, tpot_s=0.05))
    assert s.requests == 4 and s.succeeded == 3
    assert s.slo_attainment == 0.25
    assert s.errors == {"503": 1}
    assert s.goodput_per_s == pytest.approx(1 / s.duration_s)


def test_reports_render_every_run(tmp_path: Path) -> None:
    s = summarise([_record(0, 0.1, 0.3, 5)])
    results = [
        RunResult(
            workload="w", strategy=name, load=4, load_kind="qps", summary=s, per_endpoint_requests={"a": 3}
        )
        for name in ("round-robin", "default")
    ]
    md = to_markdown(results)
    assert md.count("\n| w | 4 qps |") == 2 and "round-robin" in md
    write_json(results, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert [d["strategy"] for d in data] == ["round-robin", "default"]


def test_filler_text_has_the_asked_length_and_grows_by_extension() -> None:
    """The cost benchmarks compare prompt lengths: a longer filler must start with the shorter
    one (so its prefix blocks are the shorter prompt's), and a length of 0 or less is empty."""
    assert filler_text(0) == filler_text(-5) == ""
    texts = [filler_text(n) for n in (1, 79, 80, 81, 4_000, 16_001)]
    assert [len(t) for t in texts] == [1, 79, 80, 81, 4_000, 16_001]
    assert all(longer.startswith(shorter) for shorter, longer in pairwise(texts))
    assert filler_text(4_000) == texts[4] and len(set(texts[-1].split())) > 10


def test_held_out_workloads_load_and_name_their_files() -> None:
    """``bench/holdout/`` (workloads the defaults were not tuned on, for ``bench_regret.py
    --workloads``) stays loadable: each file validates, generates and resolves its pool."""
    from infergate.bench.steady import resolve_pool

    files = sorted((Path(__file__).resolve().parents[2] / "bench" / "holdout").glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        spec = load_workload(str(path))
        assert spec.name == path.stem
        assert stream(spec, 20) if spec.phases else generate(spec)  # phases: steady runs only
        assert resolve_pool(spec).replicas >= 1  # one-replica: flow control alone


def test_a_share_of_clients_that_do_not_stream_leaves_the_requests_as_they_were(tmp_path: Path) -> None:
    """``streamed: 0.3`` marks about 70 % of the requests as answered whole, drawn from a stream
    of its own: the requests' text, lengths and objectives are those of the fully streamed
    workload, and a load point's fresh stream draws its own marks."""
    base = load_workload("tutorial-mix")
    spec = base.model_copy(update={"streamed": 0.3})
    assert base.streamed == 1.0 and all(r.stream for r in generate(base))
    marked = generate(spec)
    assert [dataclasses.replace(r, stream=True) for r in marked] == generate(base)
    share = sum(r.stream for r in marked) / len(marked)
    assert 0.25 < share < 0.35
    whole = next(r for r in marked if not r.stream)
    assert "stream" not in whole.body() and "stream_options" not in whole.body()
    assert whole.body(stream=True)["stream"] is True
    fresh = workloads.stream(spec, 500, seed=4)
    assert [r.stream for r in fresh] != [r.stream for r in marked[:500]]
    assert 0.25 < sum(r.stream for r in fresh) / len(fresh) < 0.35
    path = tmp_path / "w.yaml"
    path.write_text("name: w\nstreamed: 1.5\nworkload: {type: mix, models: [{name: m}]}\n")
    with pytest.raises(WorkloadError, match="streamed"):
        load_workload(path)


def test_clients_that_do_not_stream_are_judged_in_the_twin_only(capsys: pytest.CaptureFixture[str]) -> None:
    """A client that does not stream cannot time the tokens the SLO is judged on: the real-time
    bench refuses such a workload by name instead of judging something else."""
    from infergate.bench.cli import main

    path = Path(__file__).resolve().parents[2] / "bench" / "holdout" / "unstreamed-api.yaml"
    assert main(["--url", "http://127.0.0.1:9", "--workload", str(path)]) == 2
    assert "streamed: 0.3 only applies to --twin" in capsys.readouterr().err


def test_clients_may_send_a_cap_or_no_max_tokens_and_the_answers_stay_the_workloads(tmp_path: Path) -> None:
    """``max_tokens: 4096`` sends that cap without ``ignore_eos`` (the model ends each answer at
    its drawn length), ``none`` sends no ``max_tokens``; the requests' text and answer lengths are
    the default's, an answer longer than a cap stops at it, and nonsense is refused by name."""
    base = load_workload("sharegpt-like")
    plain = generate(base)
    assert base.max_tokens == "answer"
    assert plain[0].body()["max_tokens"] == plain[0].max_tokens and plain[0].body()["ignore_eos"] is True
    capped = generate(base.model_copy(update={"max_tokens": 4096}))
    assert [(r.prompt, r.max_tokens) for r in capped] == [(r.prompt, r.max_tokens) for r in plain]
    body = capped[0].body()
    assert body["max_tokens"] == 4096 and "ignore_eos" not in body
    assert all(r.ends_itself and r.sent_max_tokens == 4096 for r in capped)
    none = generate(base.model_copy(update={"max_tokens": "none"}))
    assert "max_tokens" not in none[0].body() and "ignore_eos" not in none[0].body()
    assert [r.max_tokens for r in none] == [r.max_tokens for r in plain]
    short = generate(base.model_copy(update={"max_tokens": 50}))
    assert [r.max_tokens for r in short] == [min(r.max_tokens, 50) for r in plain]
    assert max(r.max_tokens for r in plain) > 50
    fresh = workloads.stream(base.model_copy(update={"max_tokens": 4096}), 40, seed=2)
    assert all(r.body()["max_tokens"] == 4096 for r in fresh)
    for bad in ("0", "all"):
        path = tmp_path / "w.yaml"
        path.write_text(f"name: w\nmax_tokens: {bad}\nworkload: {{type: mix, models: [{{name: m}}]}}\n")
        with pytest.raises(WorkloadError, match="max_tokens"):
            load_workload(path)


def test_a_cap_the_model_ends_answers_under_is_the_twins_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real model server without ``ignore_eos`` ends its answers where it chooses, not where
    the workload drew them: the real-time bench and the load generator refuse such a workload."""
    import asyncio

    from infergate.bench.cli import main
    from infergate.bench.loadgen import run_closed_loop

    path = tmp_path / "capped.yaml"
    path.write_text("name: capped\nmax_tokens: 4096\nworkload: {type: mix, requests: 5, models: [{name: m}]}")
    assert main(["--url", "http://127.0.0.1:9", "--workload", str(path)]) == 2
    assert "max_tokens: 4096 only applies to --twin" in capsys.readouterr().err
    requests = generate(load_workload(path))
    with pytest.raises(ValueError, match="max_tokens"):
        asyncio.run(run_closed_loop("http://127.0.0.1:9", requests, concurrency=1))


def test_request_classes_send_their_own_slo_and_are_judged_by_it(capsys: pytest.CaptureFixture[str]) -> None:
    """``slo_ttft``/``slo_tpot`` on a class become ``x-llm-d-slo-*-ms`` headers on its requests,
    which the twin hands to the gateway; ``bench_slo_headers.py`` judges each class by its own."""
    from tests.support import load_bench_script

    path = Path(__file__).resolve().parents[2] / "bench" / "slo-classes.yaml"
    requests = generate(load_workload(str(path)))
    chat = next(r for r in requests if r.group == "chat")
    batch = next(r for r in requests if r.group == "batch")
    assert chat.headers == {"x-llm-d-slo-ttft-ms": "500", "x-llm-d-slo-tpot-ms": "50"}
    assert batch.headers == {"x-llm-d-slo-ttft-ms": "8000", "x-llm-d-slo-tpot-ms": "150"}
    assert generate(load_workload("prefill-decode-mix"))[0].headers == {}
    script = load_bench_script("bench_slo_headers")
    args = ["--workload", str(path), "--rates", "4", "--seeds", "0", "--warmup", "1", "--duration", "4"]
    assert script.main([*args, "--skip", "round-robin,untold"]) == 0
    out = capsys.readouterr().out
    assert "headers      4 QPS seed 0: met" in out and "batch: 100.0%" in out and "chat: 100.0%" in out
    # a workload whose classes carry no bounds cannot be judged by them
    with pytest.raises(SystemExit, match="a classes workload is needed"):
        script.main(["--workload", "tutorial-mix", "--rates", "4"])
