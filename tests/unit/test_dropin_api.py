"""Drop-in compatibility with llm-d-router v0.10 / GIE v1.5 on the manifest and header side.

- InferenceObjective / InferenceModelRewrite under ``llm-d.ai/v1alpha2`` load like the GIE group's;
  when both groups name the same object, ``llm-d.ai`` wins (with a warning), in any file order;
- ``kind: List`` (``kubectl get -o yaml``) and typed ``<Kind>List`` documents are expanded;
- the ``x-llm-d-*`` request headers are read beside the ``x-gateway-*`` ones, the llm-d one first,
  and neither reaches the model server;
- ``llm-d.ai/v1alpha1`` EndpointPickerConfig loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infergate.api.loader import expand_lists, load_manifests
from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.requestcontrol import headers as H

POOL = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}]
"""


def _objective(api_version: str, name: str, priority: int) -> str:
    return f"""
apiVersion: {api_version}
kind: InferenceObjective
metadata: {{name: {name}}}
spec: {{priority: {priority}, poolRef: {{name: pool}}}}
"""


def _rewrite(api_version: str, name: str, target: str) -> str:
    return f"""
apiVersion: {api_version}
kind: InferenceModelRewrite
metadata: {{name: {name}}}
spec:
  poolRef: {{name: pool}}
  rules: [{{matches: [{{model: {{value: food}}}}], targets: [{{modelRewrite: {target}}}]}}]
"""


@pytest.mark.parametrize("llmd_first", [True, False])
def test_llmd_group_wins_over_gie_group_in_any_order(tmp_path: Path, llmd_first: bool) -> None:
    llmd = _objective("llm-d.ai/v1alpha2", "chat", 9) + "---" + _rewrite("llm-d.ai/v1alpha2", "rw", "food-v2")
    gie = (
        _objective("inference.networking.x-k8s.io/v1alpha2", "chat", 1)
        + "---"
        + _rewrite("inference.networking.x-k8s.io/v1alpha2", "rw", "food-v1")
    )
    docs = [POOL, llmd, gie] if llmd_first else [POOL, gie, llmd]
    (tmp_path / "all.yaml").write_text("---".join(docs))
    ms = load_manifests([tmp_path / "all.yaml"])
    assert [(o.name, o.priority) for o in ms.objective_values()] == [("chat", 9)]
    assert [r.rules[0].targets[0].model for r in ms.rewrite_values()] == ["food-v2"]
    assert any("using llm-d.ai/v1alpha2" in w for w in ms.warnings)


def test_same_group_twice_is_still_a_duplicate(tmp_path: Path) -> None:
    doc = _objective("llm-d.ai/v1alpha2", "chat", 1)
    (tmp_path / "a.yaml").write_text(POOL + "---" + doc + "---" + doc)
    with pytest.raises(ConfigError, match="duplicate InferenceObjective"):
        load_manifests([tmp_path / "a.yaml"])


def test_kind_list_and_typed_lists_are_expanded(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text(
        """
apiVersion: v1
kind: List
items:
- apiVersion: inference.networking.k8s.io/v1
  kind: InferencePool
  metadata: {name: pool}
  spec: {selector: {matchLabels: {app: vllm}}, targetPorts: [{number: 8000}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: p0, labels: {app: vllm}}
  status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjectiveList
items:
- metadata: {name: batch}
  spec: {priority: -1, poolRef: {name: pool}}
"""
    )
    ms = load_manifests([tmp_path])
    spec = ms.pool_spec()
    assert [e.key for e in ms.endpoints_for(spec)] == ["10.0.0.1:8000"]
    assert [(o.name, o.priority) for o in ms.objective_values()] == [("batch", -1)]


def test_expand_lists_keeps_endpoint_list_and_plain_objects() -> None:
    endpoint_list = {"apiVersion": "infergate.dev/v1alpha1", "kind": "EndpointList", "spec": {}}
    assert expand_lists(endpoint_list) == [endpoint_list]
    nested = {"kind": "List", "items": [{"kind": "List", "items": [{"kind": "Pod"}]}]}
    assert expand_lists(nested) == [{"kind": "Pod"}]


def test_no_pool_message_reads_well(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(_objective("llm-d.ai/v1alpha2", "chat", 1))
    with pytest.raises(ConfigError, match=r"define no InferencePool \(pools found: none\)"):
        load_manifests([tmp_path / "a.yaml"]).pool_spec()


def test_llmd_headers_first_gie_headers_as_aliases() -> None:
    both = {
        "x-llm-d-inference-objective": "new",
        "x-gateway-inference-objective": "old",
        "x-llm-d-inference-fairness-id": "tenant-new",
        "x-gateway-inference-fairness-id": "tenant-old",
        "x-llm-d-model-name-rewrite": "m-new",
        "x-gateway-model-name-rewrite": "m-old",
    }
    assert (H.objective_of(both), H.fairness_id_of(both), H.model_name_rewrite_of(both)) == (
        "new",
        "tenant-new",
        "m-new",
    )
    old = {k: v for k, v in both.items() if k.startswith("x-gateway")}
    assert (H.objective_of(old), H.fairness_id_of(old), H.model_name_rewrite_of(old)) == (
        "old",
        "tenant-old",
        "m-old",
    )
    assert (H.objective_of({}), H.fairness_id_of({}), H.model_name_rewrite_of({})) == (
        None,
        "default-flow",
        None,
    )
    forwarded = H.clean_request_headers({**both, "x-other": "1"})
    assert forwarded == [("x-other", "1")]


def test_every_connection_header_names_hop_by_hop_headers() -> None:
    """A client may send Connection twice: the names both list stay on this hop (a dict of the
    headers kept only the last one and forwarded ``x-a``)."""
    sent = [
        ("Connection", "x-a"),
        ("Connection", "keep-alive, x-b"),
        ("x-a", "1"),
        ("x-b", "2"),
        ("x-c", "3"),
    ]
    assert H.clean_request_headers(sent) == [("x-c", "3")]
    assert H.clean_response_headers(sent) == [("x-c", "3")]


def test_dropped_names_apply_per_call_whatever_the_calls_before() -> None:
    """The skip set made for one ``drop`` never leaks into a call with another (or none), and a
    caller varying ``drop`` on every call still gets each call's own filtering."""
    sent = [("X-Forwarded-For", "1.2.3.4"), ("X-Request-Id", "r"), ("x-keep", "1"), ("Connection", "x-keep")]
    assert H.clean_request_headers(sent, drop=("x-forwarded-for", "X-REQUEST-ID")) == []
    assert H.clean_request_headers(sent[:3], drop=("x-forwarded-for", "X-REQUEST-ID")) == [("x-keep", "1")]
    assert H.clean_request_headers(sent[:3]) == sent[:3]
    assert H.clean_request_headers(sent[:3], drop=["x-request-id"]) == [sent[0], sent[2]]
    for n in range(100):
        got = H.clean_request_headers([(f"x-{n}", "a"), (f"x-{n + 1}", "b")], drop=(f"x-{n}",))
        assert got == [(f"x-{n + 1}", "b")], n


def test_llmd_endpoint_picker_config_api_version_loads() -> None:
    cfg = parse_picker_config(
        """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}, {type: max-score-picker}]
"""
    )
    assert cfg.api_version == "llm-d.ai/v1alpha1"
    assert [r.plugin_ref for r in cfg.scheduling_profiles[0].plugins] == ["queue-scorer", "max-score-picker"]


async def test_director_reads_the_llmd_headers() -> None:
    from infergate.types import Objective
    from tests.unit.test_director import FakeClock, body, make_director, make_store

    clock = FakeClock()
    ds = make_store(clock)
    ds.upsert_objective(Objective(name="gold", priority=50))
    ds.upsert_objective(Objective(name="bronze", priority=1))
    d = make_director(ds, clock)
    ctx = await d.handle_request(
        path="/v1/completions",
        headers={
            "x-llm-d-inference-objective": "gold",
            "x-gateway-inference-objective": "bronze",
            "x-llm-d-inference-fairness-id": "tenant-a",
        },
        body=body(),
    )
    assert (ctx.request.objective, ctx.request.priority, ctx.request.fairness_id) == ("gold", 50, "tenant-a")


def test_slo_headers_are_milliseconds_llmd_spelling_first() -> None:
    assert H.slo_of({}) == (None, None)
    assert H.slo_of({"x-llm-d-slo-ttft-ms": "250", "x-llm-d-slo-tpot-ms": "12.5"}) == (0.25, 0.0125)
    # the deprecated x-slo-* aliases, read only when the llm-d name is absent
    assert H.slo_of({"x-slo-ttft-ms": "400", "x-slo-tpot-ms": "30"}) == (0.4, 0.03)
    assert H.slo_of({"x-llm-d-slo-ttft-ms": "100", "x-slo-ttft-ms": "900"}) == (0.1, None)
    assert H.slo_of({"x-llm-d-slo-ttft-ms": "", "x-slo-ttft-ms": "900"}) == (0.9, None)
    for bad in ("fast", "0", "-5", "nan", "inf", "1e400"):
        with pytest.raises(H.HeaderValueError) as err:
            H.slo_of({"x-slo-tpot-ms": bad})
        assert err.value.header == "x-slo-tpot-ms" and "milliseconds" in str(err.value), bad
    # consumed by the gateway: never forwarded to the model server
    sent = {
        "x-llm-d-slo-ttft-ms": "1",
        "x-llm-d-slo-tpot-ms": "1",
        "x-slo-ttft-ms": "1",
        "x-slo-tpot-ms": "1",
    }
    assert H.clean_request_headers({**sent, "x-other": "1"}) == [("x-other", "1")]


async def test_director_gives_the_request_its_slo_headers_and_refuses_bad_ones() -> None:
    from infergate.errors import BadRequestError
    from tests.unit.test_director import FakeClock, body, make_director, make_store

    clock = FakeClock()
    d = make_director(make_store(clock), clock)
    ctx = await d.handle_request(
        path="/v1/completions",
        headers={"x-llm-d-slo-ttft-ms": "300", "x-slo-tpot-ms": "20"},
        body=body(),
    )
    assert (ctx.request.ttft_slo, ctx.request.tpot_slo) == (0.3, 0.02)
    from infergate.scheduling.engine.decisions import DecisionLog

    log = DecisionLog()
    log.record(ctx.request, ctx.result, 1.0)
    assert (
        log.recent()[0]["ttft_slo"] == 0.3 and log.recent()[0]["tpot_slo"] == 0.02
    )  # the live view shows them
    plain = await d.handle_request(path="/v1/completions", headers={}, body=body())
    assert (plain.request.ttft_slo, plain.request.tpot_slo) == (None, None)
    with pytest.raises(BadRequestError) as err:
        await d.handle_request(path="/v1/completions", headers={"x-llm-d-slo-ttft-ms": "soon"}, body=body())
    assert err.value.param == "x-llm-d-slo-ttft-ms"
    assert err.value.status == 400 and err.value.error_type == "invalid_request_error"


def test_api_key_secrets_inside_a_kind_list(tmp_path: Path) -> None:
    import base64

    import yaml

    from infergate.servers.auth import api_keys_from_manifests, load_api_keys

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keys", "labels": {"infergate.dev/api-keys": "true"}},
        "data": {"team": base64.b64encode(b"the-key").decode()},
    }
    (tmp_path / "list.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [secret]})
    )
    assert load_api_keys(tmp_path / "list.yaml").authenticate({"x-api-key": "the-key"}).name == "keys/team"
    found = api_keys_from_manifests([tmp_path])
    assert found is not None and len(found) == 1
