"""llm-d-router's ``probabilistic-admitter``: upstream's example config loads and sheds sheddable
requests with probability ``min(saturation ** power * k, 1)`` before flow control sees them.

Saturation is set exactly through the datastore's metrics (waiting queue, KV use, staleness); the
draws come from the scheduler's seeded ``random.Random``, so every run sheds the same requests.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence

import pytest

from infergate.config.picker import parse_picker_config
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError, NoCapacityError, RateLimitedError
from infergate.requestcontrol.core import RequestCore
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.scheduling.plugins.admitter import (
    ProbabilisticAdmitter,
    ProbabilisticAdmitterParams,
    shed_probability,
)
from infergate.telemetry import GatewayMetrics
from infergate.types import Endpoint, EndpointMeta, EndpointMetrics, InferenceRequest, Objective

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NOW = 100.0
DROPPED = "x-llm-d-request-dropped-reason"

# deploy/config/probabilistic-admitter-epp-config.yaml of llm-d-router, verbatim
UPSTREAM = """\
# EPP configuration for the probabilistic-admitter plugin.
#
# The probabilistic-admitter handles all saturation-based admission decisions
# at the admission extension point. To let it own admission exclusively, the
# system-level utilization-detector is configured with effectively infinite
# thresholds (queueDepthThreshold: 999999999, kvCacheUtilThreshold: 1.0).
# This prevents the flow control dispatch gate from queueing requests before
# the admitter can evaluate them.
#
# Note: If these utilization-detector thresholds are raised, requests will
# undergo flow control queueing before reaching the probabilistic-admitter.
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: probabilistic-admitter
- type: random-picker  # feel free to plug in other scorers/pickers here
- type: utilization-detector
  parameters:
    queueDepthThreshold: 999999999
    kvCacheUtilThreshold: 1.0
flowControl:
  saturationDetector:
    pluginRef: utilization-detector
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: random-picker
"""


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def now(self) -> float:
        return self.t


def store(clock: Clock, loads: Sequence[tuple[int, float] | None]) -> Datastore:
    """One endpoint per load: ``(waiting, kv_cache_usage)`` scraped now, or None (never scraped)."""
    ds = Datastore(clock, staleness=2.0)
    ds.upsert_objective(Objective(name="batch", priority=-1))
    ds.upsert_objective(Objective(name="standard", priority=0))
    ds.upsert_objective(Objective(name="interactive", priority=1))
    for i, load in enumerate(loads):
        meta = EndpointMeta(name=f"ep{i}", address=f"10.0.0.{i + 1}", port=8000)
        ds.upsert_endpoint(meta)
        ds.set_models(meta.key, frozenset({MODEL}))
        if load is not None:
            waiting, kv = load
            ds.update_metrics(
                meta.key,
                EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv, updated_at=clock.now()),
            )
    return ds


def upstream_scheduler(seed: int = 1, metrics: GatewayMetrics | None = None) -> Scheduler:
    return build_scheduler(parse_picker_config(UPSTREAM), rng=random.Random(seed), metrics=metrics)


def body(prompt: str = "hello") -> bytes:
    return json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 4}).encode()


def objective(name: str) -> dict[str, str]:
    return {"x-gateway-inference-objective": name}


def resolve(core: RequestCore, name: str, i: int = 0) -> None:
    core.resolve(path="/v1/completions", headers=objective(name), body=body(), request_id=f"r{i}", now=NOW)


class RecordingFlow:
    """Flow control that admits everything and remembers what reached it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def admit(self, request: InferenceRequest) -> bool:
        self.seen.append(request.request_id)
        return False

    def with_room(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return list(endpoints)

    def observe_tpot(self, tpot_seconds: float) -> None:
        pass

    def observe_ttft(self, seconds: float) -> None:
        pass


# ------------------------------------------------------------------------------ upstream config


async def test_upstream_config_sheds_sheddable_requests_of_a_saturated_pool_with_429() -> None:
    clock = Clock()
    ds = store(clock, [(5, 0.0), (0, 0.8)])  # each endpoint at its threshold: saturation 1.0
    m = GatewayMetrics()
    flow = RecordingFlow()
    director = Director(
        datastore=ds, scheduler=upstream_scheduler(metrics=m), flow=flow, clock=clock, metrics=m
    )
    with pytest.raises(RateLimitedError) as shed:
        await director.handle_request(path="/v1/completions", headers=objective("batch"), body=body())
    err = shed.value
    assert err.status == 429
    assert err.to_openai() == {
        "error": {
            "message": (
                "probabilistic-admitter: sheddable request rejected (saturation=1.000, probability=1.00)"
            ),
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert err.headers == {DROPPED: "rejected-saturated"}
    assert flow.seen == []  # refused before flow control
    assert all(e.in_flight == 0 for e in ds.endpoints())
    gie = {"model_name": MODEL, "target_model_name": MODEL, "error_code": "ResourceExhausted"}
    assert m.registry.get_sample_value("inference_objective_request_error_total", gie) == 1
    llmd = {**gie, "fairness_id": "default-flow", "priority": "-1"}  # counted with its priority
    assert m.registry.get_sample_value("llm_d_epp_request_error_total", llmd) == 1
    timed = {"extension_point": "Admission", "plugin_type": "probabilistic-admitter"}
    assert m.registry.get_sample_value(
        "inference_extension_plugin_duration_seconds_count",
        {**timed, "plugin_name": "probabilistic-admitter"},
    )

    # priority >= 0 is never shed, however saturated the pool
    for name in ("standard", "interactive"):
        ctx = await director.handle_request(path="/v1/completions", headers=objective(name), body=body())
        assert ctx.request.priority >= 0
        director.handle_response_complete(ctx)
    assert len(flow.seen) == 2


def test_upstream_config_builds_one_admitter_and_no_profile_stage_for_it() -> None:
    config = parse_picker_config(UPSTREAM)
    scheduler = build_scheduler(config)
    assert [type(a) for a in scheduler.admitters] == [ProbabilisticAdmitter]
    assert [p.plugin_ref for p in config.scheduling_profiles[0].plugins] == ["random-picker"]
    # without schedulingProfiles the generated default profile leaves the admitter out
    generated = parse_picker_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: probabilistic-admitter}, {type: queue-scorer}]\n"
    )
    assert [r.plugin_ref for r in generated.scheduling_profiles[0].plugins] == ["queue-scorer"]
    assert len(build_scheduler(generated).admitters) == 1
    # listed in a profile too, as upstream's latency-slo-admitter example does: still one admitter,
    # and no stage of the profile
    listed = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: probabilistic-admitter}, {type: queue-scorer}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: probabilistic-admitter}, "
        "{pluginRef: queue-scorer}]}]\n"
    )
    built = build_scheduler(parse_picker_config(listed))
    assert len(built.admitters) == 1
    assert [s.name for s in built.profiles["default"].scorers] == ["queue-scorer"]


def test_no_admitter_configured_sheds_nothing() -> None:
    clock = Clock()
    plain = UPSTREAM.replace("- type: probabilistic-admitter\n", "")
    scheduler = build_scheduler(parse_picker_config(plain), rng=random.Random(1))
    core = RequestCore(datastore=store(clock, [(50, 1.0)]), scheduler=scheduler)
    resolve(core, "batch")  # no admitter: flow control alone decides


# ------------------------------------------------------------------------------ the pool's saturation


async def test_no_endpoints_admits_and_scheduling_answers() -> None:
    clock = Clock()
    ds = store(clock, [])
    director = Director(datastore=ds, scheduler=upstream_scheduler(), flow=None, clock=clock)
    with pytest.raises(NoCapacityError):  # 503 from scheduling: the admitter let it through
        await director.handle_request(path="/v1/completions", headers=objective("batch"), body=body())
    RequestCore(datastore=ds, scheduler=upstream_scheduler()).check_admission(
        InferenceRequest(request_id="r", model=MODEL, target_model=MODEL, priority=-1)
    )


def test_unscraped_and_stale_endpoints_count_as_saturated() -> None:
    clock = Clock()
    # idle and fresh: saturation 0, nothing is shed
    core = RequestCore(datastore=store(clock, [(0, 0.0), (0, 0.0)]), scheduler=upstream_scheduler())
    for i in range(50):
        resolve(core, "batch", i)
    # one of two endpoints never scraped: saturation 0.5, p = 0.5**5 * 300 > 1
    core = RequestCore(datastore=store(clock, [(0, 0.0), None]), scheduler=upstream_scheduler())
    with pytest.raises(RateLimitedError, match=r"saturation=0\.500, probability=1\.00"):
        resolve(core, "batch")
    # a scrape older than the datastore's staleness (2 s) counts as unknown load too
    ds = store(clock, [(0, 0.0), (0, 0.0), (0, 0.0), (0, 0.0)])
    core = RequestCore(datastore=ds, scheduler=upstream_scheduler())
    first = ds.endpoints()[0]
    clock.t += 1.5
    for e in ds.endpoints()[1:]:  # the others are scraped again; the first one's scrape ages
        ds.update_metrics(e.key, EndpointMetrics(updated_at=clock.now()))
    resolve(core, "batch")  # 1.5 s old: still fresh
    clock.t += 1.0
    for e in ds.endpoints()[1:]:
        ds.update_metrics(e.key, EndpointMetrics(updated_at=clock.now()))
    assert first.key not in {e.key for e in ds.candidates()}
    with pytest.raises(RateLimitedError, match=r"saturation=0\.250"):
        resolve(core, "batch")
    # an unhealthy endpoint is not part of the pool
    ds.set_healthy(first.key, False)
    resolve(core, "batch")


def test_subset_hint_narrows_the_pool_the_admitter_sees() -> None:
    clock = Clock()
    ds = store(clock, [(0, 0.0), (20, 0.0)])  # the second endpoint is four times over its threshold
    core = RequestCore(datastore=ds, scheduler=upstream_scheduler())
    request = InferenceRequest(request_id="r", model=MODEL, target_model=MODEL, priority=-1)
    core.check_admission(request, frozenset({"10.0.0.1"}))
    with pytest.raises(RateLimitedError, match=r"saturation=2\.000"):
        core.check_admission(request)


def test_saturation_is_the_uncapped_mean_of_the_larger_ratio() -> None:
    admitter = ProbabilisticAdmitter(
        ProbabilisticAdmitterParams(queue_depth_threshold=10, kv_cache_util_threshold=0.5),
        rng=random.Random(0),
    )

    def ep(i: int, waiting: int, kv: float) -> Endpoint:
        meta = EndpointMeta(name=f"e{i}", address=f"10.0.0.{i}", port=80)
        return Endpoint(meta=meta, metrics=EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv))

    pool = [ep(1, 5, 0.1), ep(2, 1, 0.4), ep(3, 30, 0.0), ep(4, 0, 0.0)]
    # max(0.5, 0.2) + max(0.1, 0.8) + max(3.0, 0) + stale 1.0 = 5.3 over 4
    assert admitter.saturation(pool, {pool[3].key}) == pytest.approx(5.3 / 4)
    assert admitter.saturation([], set()) == 0.0


# ------------------------------------------------------------------------------ the probability


def test_shed_probability_follows_upstream_curve() -> None:
    assert shed_probability(0.0, 5.0, 300.0) == 0.0
    assert shed_probability(0.15, 5.0, 300.0) == pytest.approx(0.0228, abs=1e-4)  # ~2.3 %
    assert shed_probability(0.2, 5.0, 300.0) == pytest.approx(0.096, abs=1e-4)
    assert shed_probability(0.3, 5.0, 300.0) == pytest.approx(0.729, abs=1e-4)
    assert shed_probability(0.34, 5.0, 300.0) == 1.0
    full = (1 / 300) ** (1 / 5)  # ≈ 0.32: 100 % from here on
    assert shed_probability(full * 1.0001, 5.0, 300.0) == 1.0 > shed_probability(full * 0.99, 5.0, 300.0)
    assert shed_probability(1e80, 5.0, 300.0) == 1.0  # no overflow


def shed_share(saturation: float, n: int, seed: int) -> float:
    """The share of ``n`` sheddable requests refused by one endpoint at ``saturation`` (its
    waiting queue against a threshold of 10000, so the saturation is exact)."""
    admitter = ProbabilisticAdmitter(
        ProbabilisticAdmitterParams(queue_depth_threshold=10000), rng=random.Random(seed)
    )
    waiting = round(saturation * 10000)
    meta = EndpointMeta(name="e", address="10.0.0.1", port=80)
    pool = [Endpoint(meta=meta, metrics=EndpointMetrics(waiting_queue_size=waiting, updated_at=NOW))]
    request = InferenceRequest(request_id="r", model=MODEL, target_model=MODEL, priority=-1)
    return sum(admitter.admit(request, pool, ()) is not None for _ in range(n)) / n


@pytest.mark.parametrize(("saturation", "p"), [(0.15, 0.02278125), (0.2, 0.096), (0.3, 0.729)])
def test_rejected_share_matches_the_probability(saturation: float, p: float) -> None:
    """20 000 draws: the share's standard deviation is sqrt(p(1-p)/n) (0.0011 at p = 2.3 %,
    0.0031 at 73 %), and 5 of them is the tolerance: a seed outside it would turn up less than
    once in a million; with this seed the result is the same every run."""
    n = 20_000
    assert shed_probability(saturation, 5.0, 300.0) == pytest.approx(p)
    share = shed_share(saturation, n, seed=11)
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), share
    assert shed_share(saturation, n, seed=11) == share  # seeded: the same requests every run


def test_full_and_zero_saturation_shed_all_or_nothing_without_drawing() -> None:
    assert shed_share(0.34, 2000, seed=3) == 1.0
    assert shed_share(0.0, 2000, seed=3) == 0.0
    rng = random.Random(5)
    admitter = ProbabilisticAdmitter(rng=rng)
    state = rng.getstate()
    meta = EndpointMeta(name="e", address="10.0.0.1", port=80)
    idle = [Endpoint(meta=meta, metrics=EndpointMetrics(updated_at=NOW))]
    full = [Endpoint(meta=meta, metrics=EndpointMetrics(waiting_queue_size=9, updated_at=NOW))]
    request = InferenceRequest(request_id="r", model=MODEL, target_model=MODEL, priority=-1)
    assert admitter.admit(request, idle, ()) is None
    assert admitter.admit(request, full, ()) is not None
    assert rng.getstate() == state  # the pickers' random sequence is left as it was


def test_twin_path_is_deterministic_for_a_seed() -> None:
    """``RequestCore.resolve`` (the twin's path) sheds the same requests for the same seed."""
    clock = Clock()

    def outcomes(seed: int) -> list[bool]:
        ds = store(clock, [(1, 0.0), (2, 0.0)])  # saturation 0.3: p = 73 %
        core = RequestCore(datastore=ds, scheduler=upstream_scheduler(seed))
        out = []
        for i in range(200):
            try:
                resolve(core, "batch", i)
                out.append(True)
            except RateLimitedError:
                out.append(False)
        return out

    first = outcomes(7)
    assert first == outcomes(7)
    assert 0.6 < first.count(False) / len(first) < 0.86  # 73 % ± 5 sd of 200 draws
    assert first != outcomes(8)


# ------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("{power: 0}", "power"),
        ("{k: -1}", "k"),
        ("{power: .inf}", "power"),
        ("{k: .nan}", "k"),
        ("{queueDepthThreshold: 0}", "queueDepthThreshold"),
        ("{kvCacheUtilThreshold: 0}", "kvCacheUtilThreshold"),
        ("{kvCacheUtilThreshold: 1.5}", "kvCacheUtilThreshold"),
        ("{queueDepth: 5}", "queueDepth"),
    ],
)
def test_bad_parameters_are_refused_naming_plugin_and_field(params: str, field: str) -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        f"plugins: [{{type: probabilistic-admitter, name: shedder, parameters: {params}}},"
        " {type: random-picker}]\n"
    )
    with pytest.raises(
        ConfigError, match=rf"plugin 'shedder' \(type probabilistic-admitter\): parameters\.{field}:"
    ):
        build_scheduler(parse_picker_config(text))


def test_parameters_take_upstream_names_and_defaults() -> None:
    p = ProbabilisticAdmitterParams.model_validate(
        {"queueDepthThreshold": 8, "kvCacheUtilThreshold": 0.9, "power": 3, "k": 1000}
    )
    assert (p.queue_depth_threshold, p.kv_cache_util_threshold, p.power, p.k) == (8, 0.9, 3.0, 1000.0)
    d = ProbabilisticAdmitterParams()
    assert (d.queue_depth_threshold, d.kv_cache_util_threshold, d.power, d.k) == (5, 0.8, 5.0, 300.0)
