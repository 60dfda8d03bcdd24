"""The CRDs in deploy/crds: valid, structural, and as strict as infergate's own resource models.

A custom resource is checked the way the API server checks it on ``kubectl apply``: against the
version's ``openAPIV3Schema`` (jsonschema), with unknown fields refused (kubectl's default
``--validate=strict`` field validation, emulated by closing every object that lists properties)
and unique keys in ``x-kubernetes-list-type: map`` lists. Every invalid object below must be
refused both by the CRD and by the matching pydantic model of ``infergate.api.resources``, and
every valid one accepted by both, so the cluster and the picker agree on what a resource means.

The helpers ``crd_validate`` and ``crd_for`` are also used by test_deploy_chart.py.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pydantic
import pytest
import yaml

from infergate.api.resources import (
    InferenceModelRewriteResource,
    InferenceObjectiveResource,
    InferencePoolResource,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
EXAMPLES = ROOT / "deploy" / "examples"
SEED = ROOT / "src" / "infergate" / "manifests" / "tutorial"
K8S_VERSION = "1.33"

Obj = dict[str, Any]

MODELS: dict[str, type[pydantic.BaseModel]] = {
    "InferencePool": InferencePoolResource,
    "InferenceObjective": InferenceObjectiveResource,
    "InferenceModelRewrite": InferenceModelRewriteResource,
}


@functools.cache
def _crds() -> tuple[Obj, ...]:
    docs: list[Obj] = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return tuple(docs)


def crd_for(api_version: str, kind: str) -> tuple[Obj, Obj] | None:
    """(CRD, served version entry) for ``apiVersion``/``kind``, or None if no CRD serves it."""
    group, _, version = api_version.rpartition("/")
    for crd in _crds():
        spec = crd["spec"]
        if spec["group"] != group or spec["names"]["kind"] != kind:
            continue
        for v in spec["versions"]:
            if v["name"] == version and v.get("served", False):
                return crd, v
    return None


def _close_objects(schema: Obj) -> Obj:
    """A copy in which every object that lists properties refuses unknown fields (strict apply)."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


def _list_map_keys(
    validator: Any, keys: list[str], instance: Any, schema: Obj
) -> Iterator[jsonschema.ValidationError]:
    """``x-kubernetes-list-map-keys``: the API server refuses two items with the same keys."""
    if not isinstance(instance, list):
        return
    seen: set[tuple[Any, ...]] = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(f"Duplicate value: {dict(zip(keys, key, strict=True))}")
        seen.add(key)


# The CEL rules the CRDs use, as Python predicates over the value the rule is attached to. A rule
# not in this table fails validation, so a new rule cannot go untested.
CEL_RULES: dict[str, Callable[[Any], bool]] = {
    "self.all(t, has(t.weight)) || self.all(t, !has(t.weight))": lambda targets: (
        all("weight" in t for t in targets) or all("weight" not in t for t in targets)
    ),
}


def _cel_validations(
    validator: Any, rules: list[Obj], instance: Any, schema: Obj
) -> Iterator[jsonschema.ValidationError]:
    """``x-kubernetes-validations``: each rule's ``message`` is what the API server answers."""
    for rule in rules:
        check = CEL_RULES.get(rule["rule"])
        if check is None:
            yield jsonschema.ValidationError(f"CEL rule not known to the test: {rule['rule']}")
        elif not check(instance):
            yield jsonschema.ValidationError(rule.get("message") or f"failed rule: {rule['rule']}")


_K8sValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    {"x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-validations": _cel_validations},
)


@functools.cache
def _validator(api_version: str, kind: str) -> Any:
    found = crd_for(api_version, kind)
    assert found is not None, f"no CRD in {CRD_DIR} serves {kind} {api_version}"
    schema = _close_objects(found[1]["schema"]["openAPIV3Schema"])
    return _K8sValidator(schema)


def crd_errors(obj: Obj) -> list[str]:
    """Why the API server would refuse ``obj`` (empty when it would accept it)."""
    validator = _validator(obj["apiVersion"], obj["kind"])
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(obj)
    ]


def crd_validate(obj: Obj) -> None:
    errors = crd_errors(obj)
    assert not errors, f"{obj['kind']}/{obj['metadata'].get('name')}: " + "; ".join(errors)


def model_errors(obj: Obj) -> str | None:
    try:
        MODELS[obj["kind"]].model_validate(obj)
    except pydantic.ValidationError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------ the CRDs themselves


def test_the_crds_are_shipped() -> None:
    names = sorted(c["metadata"]["name"] for c in _crds())
    assert names == [
        "inferencemodelrewrites.inference.networking.x-k8s.io",
        "inferencemodelrewrites.llm-d.ai",
        "inferenceobjectives.inference.networking.x-k8s.io",
        "inferenceobjectives.llm-d.ai",
        "inferencepools.inference.networking.k8s.io",
    ]
    assert crd_for("llm-d.ai/v1alpha2", "InferenceObjective") is not None
    assert crd_for("llm-d.ai/v1alpha2", "InferenceModelRewrite") is not None
    assert crd_for("inference.networking.k8s.io/v1", "InferencePool") is not None
    assert crd_for("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective") is not None
    assert crd_for("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite") is not None


@pytest.mark.parametrize("crd", _crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_crd_is_a_valid_kubernetes_object(crd: Obj) -> None:
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert spec["scope"] == "Namespaced"
    assert sum(1 for v in spec["versions"] if v["storage"]) == 1
    for version in spec["versions"]:
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
        assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
        assert all(c["jsonPath"].startswith(".") for c in columns.values())


_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_NOT_IN_JUNCTORS = ("type", "default", "description", "additionalProperties", "nullable")


def _structural_problems(node: Obj, path: str, in_junctor: bool, outside: Obj | None) -> Iterator[str]:
    """The API server's "structural schema" rules that a jsonschema validator would not notice."""
    if in_junctor:
        for key in _NOT_IN_JUNCTORS:
            if key in node:
                yield f"{path}: {key!r} inside a logical junctor"
        for name in node.get("properties", {}):
            if outside is None or name not in outside.get("properties", {}):
                yield f"{path}.{name}: field only specified inside a junctor"
    else:
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            yield f"{path}: no type"
        if "properties" in node and "additionalProperties" in node:
            yield f"{path}: both properties and additionalProperties"
    if node.get("uniqueItems"):
        yield f"{path}: uniqueItems is not allowed"
    if node.get("x-kubernetes-list-type") == "map":
        item = node["items"]
        for key in node["x-kubernetes-list-map-keys"]:
            if key not in item.get("required", []) and "default" not in item["properties"][key]:
                yield f"{path}: list-map key {key!r} must be required or defaulted"
    for name, child in node.get("properties", {}).items():
        sub_outside = (outside or {}).get("properties", {}).get(name) if in_junctor else child
        yield from _structural_problems(child, f"{path}.{name}", in_junctor, sub_outside)
    if isinstance(node.get("items"), dict):
        items_outside = (outside or {}).get("items") if in_junctor else node["items"]
        yield from _structural_problems(node["items"], f"{path}[]", in_junctor, items_outside)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _structural_problems(node["additionalProperties"], f"{path}{{}}", in_junctor, None)
    for junctor in _JUNCTORS:
        branches = node.get(junctor)
        if branches is None:
            continue
        for i, branch in enumerate(branches if isinstance(branches, list) else [branches]):
            yield from _structural_problems(branch, f"{path}.{junctor}[{i}]", True, outside or node)


@pytest.mark.parametrize("crd", _crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_crd_schema_is_structural(crd: Obj) -> None:
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        problems = list(_structural_problems(schema, version["name"], False, None))
        assert not problems, problems
        jsonschema.Draft7Validator.check_schema(schema)
        assert schema["properties"]["metadata"] == {"type": "object"}


def _cel_rules(node: Any) -> Iterator[Obj]:
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations", [])
        for value in node.values():
            yield from _cel_rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from _cel_rules(value)


def test_every_cel_rule_has_a_readable_message() -> None:
    rules = [r for crd in _crds() for r in _cel_rules(crd["spec"])]
    assert rules, "the rewrite CRDs check their weights with a CEL rule"
    for rule in rules:
        assert rule["rule"] in CEL_RULES
        assert len(rule.get("message", "").split()) >= 4, rule


def test_partial_weights_are_refused_with_the_rule_message() -> None:
    for group in ("inference.networking.x-k8s.io", "llm-d.ai"):
        obj = {
            "apiVersion": f"{group}/v1alpha2",
            "kind": "InferenceModelRewrite",
            "metadata": {"name": "rw"},
            "spec": {
                "poolRef": {"name": "pool"},
                "rules": [{"targets": [{"modelRewrite": "a", "weight": 1}, {"modelRewrite": "b"}]}],
            },
        }
        assert crd_errors(obj) == [
            "spec.rules.0.targets: weights should be set for all targets, or for none of them"
        ]


def test_structural_checker_catches_a_bad_schema() -> None:
    bad = {
        "type": "object",
        "properties": {"a": {"properties": {}}, "b": {"type": "array", "uniqueItems": True, "items": {}}},
        "anyOf": [{"type": "object", "properties": {"c": {}}}],
    }
    problems = list(_structural_problems(bad, "v", False, None))
    assert any("v.a: no type" in p for p in problems)
    assert any("uniqueItems" in p for p in problems)
    assert any("'type' inside" in p for p in problems)
    assert any("v.anyOf[0].c: field only specified inside" in p for p in problems)


# ------------------------------------------------------------------- same verdicts as the models


def _pool() -> Obj:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "vllm-llama3.1-8b-instruct", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "vllm-llama3.1-8b-instruct"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "picker-epp", "port": {"number": 9002}, "failureMode": "FailOpen"},
        },
    }


def _objective() -> Obj:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": {"name": "food-review"},
        "spec": {"priority": 10, "poolRef": {"name": "vllm-llama3.1-8b-instruct", "kind": "InferencePool"}},
    }


def _rewrite() -> Obj:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": {"name": "food-review-rollout"},
        "spec": {
            "poolRef": {"name": "vllm-llama3.1-8b-instruct"},
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": "food-review"}}],
                    "targets": [
                        {"modelRewrite": "food-review-v1", "weight": 90},
                        {"modelRewrite": "food-review-v2", "weight": 10},
                    ],
                }
            ],
        },
    }


Mutation = Callable[[Obj], None]


def _set(path: str, value: Any) -> Mutation:
    def apply(obj: Obj) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return apply


_DELETE = object()

INVALID: list[tuple[str, Callable[[], Obj], Mutation]] = [
    ("pool: negative port", _pool, _set("spec.targetPorts.0.number", -1)),
    ("pool: port 0", _pool, _set("spec.targetPorts.0.number", 0)),
    ("pool: port 65536", _pool, _set("spec.targetPorts.0.number", 65536)),
    ("pool: port not a number", _pool, _set("spec.targetPorts.0.number", "http")),
    ("pool: duplicate ports", _pool, _set("spec.targetPorts", [{"number": 8000}, {"number": 8000}])),
    ("pool: nine ports", _pool, _set("spec.targetPorts", [{"number": 8000 + i} for i in range(9)])),
    ("pool: no target ports", _pool, _set("spec.targetPorts", [])),
    ("pool: missing targetPorts", _pool, _set("spec.targetPorts", _DELETE)),
    ("pool: missing selector", _pool, _set("spec.selector", _DELETE)),
    ("pool: missing matchLabels", _pool, _set("spec.selector", {})),
    ("pool: empty matchLabels", _pool, _set("spec.selector.matchLabels", {})),
    ("pool: flat v1alpha2 selector", _pool, _set("spec.selector", {"app": "vllm"})),
    ("pool: bad failureMode", _pool, _set("spec.endpointPickerRef.failureMode", "FailSometimes")),
    ("pool: lower-case failureMode", _pool, _set("spec.endpointPickerRef.failureMode", "failopen")),
    ("pool: bad appProtocol", _pool, _set("spec.appProtocol", "grpc")),
    ("pool: picker without name", _pool, _set("spec.endpointPickerRef.name", _DELETE)),
    ("pool: picker with empty name", _pool, _set("spec.endpointPickerRef.name", "")),
    ("pool: Service picker without port", _pool, _set("spec.endpointPickerRef.port", _DELETE)),
    ("pool: picker port negative", _pool, _set("spec.endpointPickerRef.port.number", -9002)),
    ("pool: typo targetPort", _pool, _set("spec.targetPort", 8000)),
    ("pool: unknown picker field", _pool, _set("spec.endpointPickerRef.portNumber", 9002)),
    ("pool: missing spec", _pool, _set("spec", _DELETE)),
    ("objective: missing poolRef", _objective, _set("spec.poolRef", _DELETE)),
    ("objective: poolRef without name", _objective, _set("spec.poolRef.name", _DELETE)),
    ("objective: poolRef empty name", _objective, _set("spec.poolRef.name", "")),
    ("objective: priority not a number", _objective, _set("spec.priority", "high")),
    ("objective: fractional priority", _objective, _set("spec.priority", 1.5)),
    ("objective: legacy criticality", _objective, _set("spec.criticality", "Critical")),
    ("rewrite: missing poolRef", _rewrite, _set("spec.poolRef", _DELETE)),
    ("rewrite: missing rules", _rewrite, _set("spec.rules", _DELETE)),
    ("rewrite: no rules", _rewrite, _set("spec.rules", [])),
    ("rewrite: rule without targets", _rewrite, _set("spec.rules.0.targets", _DELETE)),
    ("rewrite: empty targets", _rewrite, _set("spec.rules.0.targets", [])),
    ("rewrite: weight 0", _rewrite, _set("spec.rules.0.targets.0.weight", 0)),
    ("rewrite: weight too big", _rewrite, _set("spec.rules.0.targets.0.weight", 1_000_001)),
    ("rewrite: weights on some targets", _rewrite, _set("spec.rules.0.targets.1", {"modelRewrite": "v2"})),
    ("rewrite: empty modelRewrite", _rewrite, _set("spec.rules.0.targets.0.modelRewrite", "")),
    ("rewrite: match type Regex", _rewrite, _set("spec.rules.0.matches.0.model.type", "RegularExpression")),
    ("rewrite: empty match value", _rewrite, _set("spec.rules.0.matches.0.model.value", "")),
    ("rewrite: match without value", _rewrite, _set("spec.rules.0.matches.0.model.value", _DELETE)),
]

VALID: list[tuple[str, Callable[[], Obj], Mutation]] = [
    ("pool: as written", _pool, _set("spec.appProtocol", "http")),
    ("pool: without picker", _pool, _set("spec.endpointPickerRef", _DELETE)),
    ("pool: picker failureMode defaulted", _pool, _set("spec.endpointPickerRef.failureMode", _DELETE)),
    (
        "pool: non-Service picker without port",
        _pool,
        _set("spec.endpointPickerRef", {"kind": "Pod", "name": "p"}),
    ),
    ("pool: eight ports", _pool, _set("spec.targetPorts", [{"number": 8000 + i} for i in range(8)])),
    ("pool: h2c", _pool, _set("spec.appProtocol", "kubernetes.io/h2c")),
    ("pool: FailClose", _pool, _set("spec.endpointPickerRef.failureMode", "FailClose")),
    ("objective: as written", _objective, _set("spec.priority", 10)),
    ("objective: sheddable", _objective, _set("spec.priority", -1)),
    ("objective: no priority", _objective, _set("spec.priority", _DELETE)),
    ("rewrite: as written", _rewrite, _set("spec.poolRef.kind", "InferencePool")),
    ("rewrite: generic rule", _rewrite, _set("spec.rules.0.matches", _DELETE)),
    (
        "rewrite: no weights",
        _rewrite,
        _set("spec.rules.0.targets", [{"modelRewrite": "a"}, {"modelRewrite": "b"}]),
    ),
]


@pytest.mark.parametrize(("case", "make", "mutate"), INVALID, ids=[c[0] for c in INVALID])
def test_crd_and_model_both_reject(case: str, make: Callable[[], Obj], mutate: Mutation) -> None:
    base = make()
    assert crd_errors(base) == [] and model_errors(base) is None, "the base object must be valid"
    obj = make()
    mutate(obj)
    assert obj != base, f"{case}: the mutation changed nothing"
    assert crd_errors(obj), f"{case}: the CRD accepts it"
    assert model_errors(obj) is not None, f"{case}: infergate's model accepts it"


@pytest.mark.parametrize(("case", "make", "mutate"), VALID, ids=[c[0] for c in VALID])
def test_crd_and_model_both_accept(case: str, make: Callable[[], Obj], mutate: Mutation) -> None:
    obj = make()
    mutate(obj)
    assert crd_errors(obj) == [], case
    assert model_errors(obj) is None, case


def _crd_defaults(node: Obj, path: str = "") -> Iterator[tuple[str, Any]]:
    if "default" in node:
        yield path, node["default"]
    for name, child in node.get("properties", {}).items():
        yield from _crd_defaults(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from _crd_defaults(node["items"], f"{path}[]")


def _walk(obj: Any, path: str) -> Any:
    """Follow ``a.b[].c`` (``[]`` = first item) through nested dicts and lists."""
    for part in path.replace("[]", ".0").split("."):
        obj = obj[int(part)] if part.isdigit() else obj[part]
    return obj


def test_crd_defaults_are_the_models_defaults() -> None:
    """What the API server fills in is what the picker assumes when the field is left out."""
    checked = []
    for make in (_pool, _objective, _rewrite):
        obj = make()
        found = crd_for(obj["apiVersion"], obj["kind"])
        assert found is not None
        for path, default in _crd_defaults(
            found[1]["schema"]["openAPIV3Schema"]["properties"]["spec"], "spec"
        ):
            stripped = make()
            parent_path, _, field = path.replace("[]", ".0").rpartition(".")
            _walk(stripped, parent_path).pop(field, None)
            model = MODELS[obj["kind"]].model_validate(stripped).model_dump(by_alias=True)
            assert _walk(model, path) == default, f"{obj['kind']} {path}: CRD default {default!r}"
            checked.append(f"{obj['kind']}:{path}")
    assert "InferencePool:spec.endpointPickerRef.failureMode" in checked
    assert "InferenceModelRewrite:spec.rules[].matches[].model.type" in checked
    assert len(checked) == 9, checked


def test_status_written_by_the_picker_validates() -> None:
    pool = _pool()
    condition = {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    pool["status"] = {
        "parents": [
            {
                "parentRef": {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "name": "inference-gateway",
                },
                "controllerName": "infergate.dev/epp",
                "conditions": [condition, {**condition, "type": "ResolvedRefs", "reason": "ResolvedRefs"}],
            }
        ]
    }
    crd_validate(pool)
    pool["status"]["parents"][0]["conditions"][1]["type"] = "Accepted"
    assert any("Duplicate value" in e for e in crd_errors(pool))
    pool["status"]["parents"][0]["conditions"] = [{**condition, "status": "Yes"}]
    assert crd_errors(pool)


# ------------------------------------------------------------------- tutorial and example manifests


def _docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_example_and_tutorial_custom_resources_validate() -> None:
    checked = []
    for path in [*sorted(EXAMPLES.glob("*.yaml")), SEED / "inferencepool.yaml"]:
        for doc in _docs(path):
            if doc.get("kind") in MODELS and crd_for(doc["apiVersion"], doc["kind"]) is not None:
                crd_validate(doc)
                assert model_errors(doc) is None
                checked.append(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
    assert "inferenceobjectives.yaml:InferenceObjective/food-review" in checked
    assert "inferenceobjectives.yaml:InferenceObjective/llama3-base-model" in checked
    assert "inferencepool.yaml:InferencePool/vllm-llama3.1-8b-instruct" in checked


def test_tutorial_objectives_use_a_version_no_crd_serves() -> None:
    """The tutorial's second listing says inference.networking.k8s.io/v1alpha1: documented, not served."""
    versions = {d["apiVersion"] for d in _docs(SEED / "inferenceobjectives.yaml")}
    assert versions == {"inference.networking.k8s.io/v1alpha1"}
    assert crd_for("inference.networking.k8s.io/v1alpha1", "InferenceObjective") is None
    adapted = {d["apiVersion"] for d in _docs(EXAMPLES / "inferenceobjectives.yaml")}
    assert adapted == {"inference.networking.x-k8s.io/v1alpha2"}


def test_example_builtin_kinds_validate_against_kubernetes_schemas() -> None:
    kinds = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if path.name.startswith("values-"):
            continue
        for doc in _docs(path):
            if "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].split("/")[0].endswith(
                ".k8s.io"
            ):
                continue  # networking.gke.io (HealthCheckPolicy): not a built-in kind
            if doc["apiVersion"].startswith(("gateway.networking.k8s.io", "inference.networking")):
                continue  # Gateway API and inference CRDs: not built in
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            kinds.append(doc["kind"])
    assert {
        "Deployment",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "Secret",
    } <= set(kinds)
