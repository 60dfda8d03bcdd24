"""The corpus regression guard: the product's default routing must hold round-robin's SLO rate.

On every corpus workload, at a reduced size (2 replicas; a measured window of about 250 requests
at round-robin's rate, 5 to 40 s, after a third of that as warm-up; round-robin's SLO rate to
10 %), the twin finds round-robin's SLO rate and then runs ``default`` (the default picker with flow
control, as the product runs) at 85 % of it, on the identical request stream: default must meet the
SLO there. The 15 % allows for the coarse search and the short windows; a default that herds or thrashes falls
far below (long-context RAG: about half).

One workload's verdict there depends on the stream more than on the routing: prefill-decode-mix at
2 replicas, where one rate's stream decides pass or fail both ways. It is checked on paired streams
instead, over several arrival seeds and rates (the last test below).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from infergate.bench.steady import SteadyPlan, SteadyRunner, resolve_pool
from infergate.bench.workloads import builtin_workloads, load_workload

# Virtual-time runs: CPU-bound, they cannot hang on I/O, and on a loaded 2-core machine they take
# minutes; the suite-wide 120 s hang guard would cut them short.
pytestmark = pytest.mark.timeout(900)


def plan(rate_hint: float) -> SteadyPlan:
    """A window holding about 250 measured requests near round-robin's rate (5 to 40 s), a warm-up
    of a third of it: slow workloads get long windows, fast ones (whose requests are short) short."""
    window = min(40.0, max(5.0, 250.0 / rate_hint))
    return SteadyPlan(unloaded_e2e_s=1.0, warmup_s=max(1.0, window / 3), duration_s=window, cooldown_s=1.0)


# Round-robin's reduced-size SLO rates when this test was written: its search starts just below
# them and steps by 10 %, so it takes two runs when nothing changed. Only the cost depends on them.
RR_RATE = {
    "agentic-sessions": 19.72,
    "bursts": 27.84,
    "bursty-chat": 436.10,
    "diurnal-ramp": 113.91,
    "long-context-rag": 4.00,
    "lora-zipf": 3.20,
    "many-tenants": 21.52,
    "mixed-gpus": 26.37,
    "mixed-priorities": 45.56,
    "multi-tenant-chat": 70.48,
    "prefill-decode-mix": 24.21,
    "sharegpt-like": 260.39,
    "tutorial-mix": 14.24,
}

# Checked on paired streams instead of at one searched rate (see the module docstring): its
# single-stream verdict once failed default at 19.25 QPS (p90 TPOT 65.9 ms) after round-robin's
# search had ended at 22.65 on luckier streams, while over 12 paired streams at 0.85-1.0 x
# round-robin's rate default met the SLO at 7 against round-robin's 5.
PAIRED = "prefill-decode-mix"


def _cases() -> list[object]:
    return [pytest.param(name, id=name) for name in sorted(builtin_workloads()) if name != PAIRED]


@pytest.mark.slow
@pytest.mark.parametrize("name", _cases())
def test_default_holds_round_robins_slo_rate(name: str) -> None:
    spec = load_workload(name)
    full = resolve_pool(spec)
    shape = replace(full, replicas=2)
    hint = RR_RATE.get(name)
    runner = SteadyRunner(spec, shape, plan=plan(hint or 10.0))
    rr = runner.slo_rate(
        "round-robin", start=None if hint is None else 0.98 * hint, tolerance=0.1, factor=1.1, scout=False
    )
    assert rr.qps > 0, f"round-robin met the SLO at no rate on {name}: {rr.probes}"
    point = runner.point("default", round(0.85 * rr.qps, 6))
    assert point.met, (
        f"default misses the SLO at 85 % of round-robin's SLO rate ({rr.qps:.2f} QPS) on {name}: "
        f"p90 TTFT {point.summary.ttft_p90:.3f} s, p90 TPOT {point.summary.tpot_p90 * 1000:.1f} ms, "
        f"{point.summary.succeeded}/{point.summary.requests} served "
        f"({point.stopped_early or 'ran to the end'})"
    )


@pytest.mark.slow
def test_prefill_decode_mix_default_beats_round_robin_on_paired_streams() -> None:
    """Prefill-heavy beside decode-heavy requests on 2 replicas: default (which keeps long prompts
    away from replicas busy decoding) meets the SLO on at least as many paired streams as
    round-robin, 4 arrival seeds x 3 rates up to round-robin's SLO rate, with a lower mean p90 TPOT.
    Measured when written: 7 against 5 of 12, 49.8 against 53.9 ms (``prefix-only``, which piles
    requests onto a replica by prefix, 5 and 69.4 ms: it would fail here; ``least-in-flight`` does
    better than default at this size, 9 and 46.2 ms, though not on the full 5-replica pool)."""
    spec = load_workload(PAIRED)
    shape = replace(resolve_pool(spec), replicas=2)
    rr_rate = RR_RATE[PAIRED]
    seeds, fractions = range(4), (0.85, 0.93, 1.0)
    met = {"default": 0, "round-robin": 0}
    tpot = {"default": 0.0, "round-robin": 0.0}
    for seed in seeds:
        runner = SteadyRunner(spec, shape, plan=plan(rr_rate), seed=seed)
        runner.early_stop = False
        for fraction in fractions:
            for strategy in met:
                point = runner.point(strategy, round(fraction * rr_rate, 2))
                met[strategy] += point.met
                tpot[strategy] += point.summary.tpot_p90 / (len(seeds) * len(fractions))
    assert met["default"] >= met["round-robin"] and tpot["default"] < tpot["round-robin"], (met, tpot)
