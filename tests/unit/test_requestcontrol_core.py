"""The synchronous request-control core, and the digital twin running it instead of a copy."""

from __future__ import annotations

import json
import random

import pytest

from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import BenchRequest
from infergate.config.picker import default_picker_config
from infergate.datastore.store import Datastore
from infergate.errors import ModelNotFoundError, NoCapacityError
from infergate.requestcontrol.core import RequestCore
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.types import (
    EndpointMeta,
    EndpointMetrics,
    ModelRewrite,
    Objective,
    RewriteRule,
    RewriteTarget,
)

BASE = "meta-llama/Llama-3.1-8B-Instruct"


class Clock:
    def now(self) -> float:
        return 10.0


def _core(n: int = 3) -> tuple[RequestCore, Datastore]:
    clock = Clock()
    ds = Datastore(clock, staleness=2.0)
    for i in range(n):
        meta = EndpointMeta(name=f"ep{i}", address=f"10.0.0.{i + 1}", port=8000)
        ds.upsert_endpoint(meta)
        ds.update_metrics(meta.key, EndpointMetrics(updated_at=clock.now(), max_active_adapters=2))
        # only ep0 serves the adapter
        ds.set_models(meta.key, frozenset({BASE, "food-review"} if i == 0 else {BASE}))
    ds.upsert_objective(Objective(name="food-review", priority=10))
    ds.upsert_rewrite(
        ModelRewrite(
            name="alias",
            rules=(RewriteRule(match_models=("reviews",), targets=(RewriteTarget(model="food-review"),)),),
        )
    )
    sched = build_scheduler(default_picker_config(lora=True), rng=random.Random(0), clock=clock)
    return RequestCore(datastore=ds, scheduler=sched, rng=random.Random(0)), ds


def _body(model: str) -> bytes:
    return json.dumps({"model": model, "prompt": "hello there", "max_tokens": 4}).encode()


def test_resolve_applies_rewrite_objective_and_schedules_on_a_server_of_the_target() -> None:
    core, _ = _core()
    resolved = core.resolve(
        path="/v1/completions", headers={}, body=_body("reviews"), request_id="r1", now=10.0
    )
    req = resolved.request
    assert (req.model, req.target_model, req.objective, req.priority) == (
        "reviews",
        "food-review",
        "food-review",
        10,
    )
    assert b'"food-review"' in resolved.upstream_body and b'"reviews"' not in resolved.upstream_body
    # only ep0 lists the adapter in /v1/models: it is the primary, every time
    for _ in range(5):
        assert core.schedule(req).primary.key == "10.0.0.1:8000"


def test_unknown_model_is_404_and_empty_subset_is_503() -> None:
    core, _ = _core()
    with pytest.raises(ModelNotFoundError):
        core.resolve(path="/v1/completions", headers={}, body=_body("nope"), request_id="r", now=10.0)
    req = core.resolve(path="/v1/completions", headers={}, body=_body(BASE), request_id="r", now=10.0).request
    with pytest.raises(NoCapacityError, match="subset"):
        core.schedule(req, subset=frozenset({"192.0.2.1"}))
    assert core.schedule(req, subset=frozenset({"10.0.0.3"})).primary.key == "10.0.0.3:8000"


def test_room_filter_narrows_candidates_and_keeps_the_full_ones_as_fallbacks() -> None:
    core, _ = _core()
    req = core.resolve(path="/v1/completions", headers={}, body=_body(BASE), request_id="r", now=10.0).request
    result = core.schedule(req, room=lambda eps: [e for e in eps if e.key == "10.0.0.2:8000"])
    assert result.primary.key == "10.0.0.2:8000"
    assert {t.key for t in result.targets[1:]} == {"10.0.0.1:8000", "10.0.0.3:8000"}


def test_twin_resolves_rewrites_and_unknown_models_through_the_core() -> None:
    rewrite = ModelRewrite(
        name="alias",
        rules=(RewriteRule(match_models=("reviews",), targets=(RewriteTarget(model="food-review"),)),),
    )
    models = ["reviews"] * 4 + ["no-such-model"] * 2
    requests = [
        BenchRequest(index=i, model=m, max_tokens=8, prompt=f"request {i} " * 20)
        for i, m in enumerate(models)
    ]
    config = TwinConfig(rewrites=(rewrite,))
    out = run_twin(requests, [0.1 * i for i in range(6)], strategy="round-robin", config=config)
    assert [r.status for r in out.records] == [200, 200, 200, 200, 404, 404]
    # the rewritten requests ran as the food-review adapter: each replica loaded it once
    assert out.lora_swaps == 3


def test_twin_flow_control_sees_objective_priorities() -> None:
    # a flood: the sheddable objective's requests are rejected under saturation, the critical never
    objectives = (Objective(name="cad-fabricator", priority=-1), Objective(name="food-review", priority=10))
    requests = []
    for i in range(600):
        model = "cad-fabricator" if i % 2 else "food-review"
        requests.append(BenchRequest(index=i, model=model, max_tokens=64, prompt="word " * 1500))
    config = TwinConfig(objectives=objectives, flow_control=True)
    out = run_twin(requests, [0.002 * i for i in range(600)], strategy="round-robin", config=config)
    shed = [r for r in out.records if r.status == 429]
    assert shed and all(r.model == "cad-fabricator" for r in shed)
    assert all(r.status == 200 for r in out.records if r.model == "food-review")
