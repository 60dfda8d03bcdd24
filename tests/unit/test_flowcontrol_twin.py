"""Flow control under overload, in virtual time: the gateway's real request path and flow control in
the digital twin, so the priority order is checked exactly, with no wall clock involved.

Two replicas get three times what they can serve, from three objectives: ``high`` (priority 20),
``low`` (10) and ``shed`` (-1). With flow control the high stream keeps a short time to first token
while the low one absorbs the wait and sheddable requests are rejected; without it everyone waits alike.
"""

from __future__ import annotations

import random

import pytest

from infergate.bench.loadgen import RequestRecord
from infergate.bench.stats import percentile
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import BenchRequest
from infergate.config.settings import Settings
from infergate.types import ModelRewrite, Objective, RewriteRule, RewriteTarget

# Virtual-time runs: CPU-bound, they cannot hang on I/O, and on a loaded 2-core machine they take
# minutes; the suite-wide 120 s hang guard would cut them short.
pytestmark = pytest.mark.timeout(900)

BASE = "meta-llama/Llama-3.1-8B-Instruct"
RATES = {"high": 20.0, "low": 100.0, "shed": 40.0}  # req/s: about three times what two replicas serve
DURATION = 12.0


def overload(
    *,
    flow_control: bool,
    rates: dict[str, float] = RATES,
    words: int = 1500,
    max_tokens: int = 64,
    settings: Settings | None = None,
) -> dict[str, list[RequestRecord]]:
    rng = random.Random(1)
    events: list[tuple[float, str]] = []
    for name, rate in rates.items():
        t = rng.expovariate(rate)
        while t < DURATION:
            events.append((t, name))
            t += rng.expovariate(rate)
    events.sort()
    requests = [
        BenchRequest(index=i, model=name, max_tokens=max_tokens, prompt=f"{i} " + "word " * words)
        for i, (_, name) in enumerate(events)
    ]
    # the objectives' names are what clients ask for; a rewrite sends them all to the base model
    rewrite = ModelRewrite(
        name="objectives",
        rules=(RewriteRule(match_models=tuple(RATES), targets=(RewriteTarget(model=BASE),)),),
    )
    objectives = (
        Objective(name="high", priority=20),
        Objective(name="low", priority=10),
        Objective(name="shed", priority=-1),
    )
    config = TwinConfig(
        replicas=2,
        adapters=(),
        objectives=objectives,
        rewrites=(rewrite,),
        flow_control=flow_control,
        settings=settings,
    )
    strategy = "default" if flow_control else "default+nofc"
    out = run_twin(requests, [t for t, _ in events], strategy=strategy, config=config)
    by: dict[str, list[RequestRecord]] = {name: [] for name in rates}
    for r in out.records:
        by[r.model].append(r)
    return by


def ttfts(records: list[RequestRecord]) -> list[float]:
    return [r.ttft for r in records if r.status == 200 and r.ttft is not None]


def test_priority_order_holds_under_overload() -> None:
    on, off = overload(flow_control=True), overload(flow_control=False)
    # priorities >= 0 are never shed and nothing else fails
    assert all(r.status == 200 for name in ("high", "low") for r in on[name])
    assert {r.status for r in on["shed"]} <= {200, 429}
    assert sum(r.status == 429 for r in on["shed"]) > len(on["shed"]) / 2, "most sheddable requests are shed"
    high_on, low_on = percentile(ttfts(on["high"]), 90), percentile(ttfts(on["low"]), 50)
    high_off = percentile(ttfts(off["high"]), 90)
    summary = f"p90 high on={high_on:.3f}s off={high_off:.3f}s, p50 low on={low_on:.3f}s"
    assert high_on < low_on, summary  # priority 10 absorbs the wait
    assert high_on < high_off / 2, summary  # without flow control everyone suffers alike
    assert all(r.status == 200 for r in off["shed"])  # no flow control: nothing is shed either


def test_priority_order_holds_when_the_backlog_is_in_the_servers_frontends() -> None:
    """Short requests overload the servers' API frontends (one serial CPU stage each, ~100 requests
    a second), not their engines: the engines report a few running and nothing waiting while the
    backlog queues in the frontends, where only the gateway's own in-flight count shows it
    (``flow_control.frontend_wait``). Without that term flow control admitted everything and
    priority 20 waited in the frontends' FIFO like everybody else."""
    rates = {"high": 40.0, "low": 200.0, "shed": 100.0}  # two frontends serve ~200 requests a second
    blind_settings = Settings().replace({"flow_control.frontend_wait": None})
    on = overload(flow_control=True, rates=rates, words=30, max_tokens=8)
    blind = overload(flow_control=True, rates=rates, words=30, max_tokens=8, settings=blind_settings)
    assert all(r.status == 200 for name in ("high", "low") for r in on[name])
    high_on, low_on = percentile(ttfts(on["high"]), 90), percentile(ttfts(on["low"]), 50)
    high_blind = percentile(ttfts(blind["high"]), 90)
    summary = f"p90 high on={high_on:.3f}s without the term={high_blind:.3f}s, p50 low on={low_on:.3f}s"
    assert high_on < low_on, summary
    assert high_on < high_blind / 4, summary
    assert sum(r.status == 429 for r in on["shed"]) > len(on["shed"]) / 2, "most sheddable requests are shed"
    assert sum(r.status == 429 for r in blind["shed"]) < len(blind["shed"]) / 2, (
        "the blind pool looked unsaturated"
    )


def test_a_request_whose_wait_outlives_its_ttl_is_answered_429_as_the_gateway_does() -> None:
    """The pool has endpoints but no room comes within ``request_ttl``: the gateway answers 429
    ``rejected-ttl-expired``; the twin's records say the same, so a search counts them as the
    gateway's clients would see them."""
    short = Settings().replace({"flow_control.request_ttl": 0.5})
    on = overload(flow_control=True, settings=short)
    expired = [r for r in on["low"] if r.status != 200]
    assert expired, "with half a second to wait some priority-10 requests outlive it"
    assert {r.status for r in expired} == {429}
    assert all(r.error == "request timed out in the queue" for r in expired)
