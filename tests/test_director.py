"""Director unit tests: real Datastore and Scheduler, synthetic metrics, a controllable clock."""

from __future__ import annotations

import contextlib
import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from infergate.config.picker import default_picker_config
from infergate.datastore.store import Datastore
from infergate.errors import BadRequestError, ModelNotFoundError, NoCapacityError, RequestError
from infergate.requestcontrol.director import Director
from infergate.requestcontrol.parsing import parse_body
from infergate.requestcontrol.usage import ModelNameRewriter, SSEUsageParser, usage_from_json
from infergate.scheduling.scheduler import build_scheduler
from infergate.telemetry import GatewayMetrics
from infergate.types import (
    ApiKind,
    EndpointMeta,
    EndpointMetrics,
    ModelRewrite,
    Objective,
    RewriteRule,
    RewriteTarget,
)

BASE = "meta-llama/Llama-3.1-8B-Instruct"


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def make_store(clock: FakeClock, n: int = 3) -> Datastore:
    ds = Datastore(clock, staleness=2.0)
    for i in range(n):
        meta = EndpointMeta(name=f"ep{i}", address="127.0.0.1", port=9000 + i, pool="p")
        ds.upsert_endpoint(meta)
        ds.update_metrics(meta.key, EndpointMetrics(updated_at=clock.now(), max_active_adapters=2))
        ds.set_models(meta.key, frozenset({BASE, "food-review"}))
    return ds


def make_director(
    ds: Datastore, clock: FakeClock, metrics: GatewayMetrics | None = None, max_attempts: int = 2
) -> Director:
    sched = build_scheduler(default_picker_config(lora=True), rng=random.Random(1), clock=clock)
    return Director(
        datastore=ds,
        scheduler=sched,
        flow=None,
        clock=clock,
        metrics=metrics,
        rng=random.Random(7),
        max_attempts=max_attempts,
    )


def body(**fields: object) -> bytes:
    data: dict[str, object] = {"model": BASE, "prompt": "hello", "max_tokens": 4}
    data.update(fields)
    return json.dumps(data).encode()


def samples(m: GatewayMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/completions", b"", None),
        ("/v1/completions", b"{", None),
        ("/v1/completions", b"\xff\xfe", None),
        ("/v1/completions", b"[1,2]", None),
        ("/v1/completions", b'{"prompt":"x"}', "model"),
        ("/v1/completions", b'{"model":7,"prompt":"x"}', "model"),
        ("/v1/completions", b'{"model":"m"}', "prompt"),
        ("/v1/completions", b'{"model":"m","prompt":{"a":1}}', "prompt"),
        ("/v1/completions", b'{"model":"m","prompt":"x","stream":"yes"}', "stream"),
        ("/v1/completions", b'{"model":"m","prompt":"x","max_tokens":-1}', "max_tokens"),
        ("/v1/completions", b'{"model":"m","prompt":"x","max_tokens":1e400}', "max_tokens"),
        ("/v1/completions", b'{"model":"m","prompt":"x","max_tokens":NaN}', None),
        ("/v1/chat/completions", b'{"model":"m","messages":[]}', "messages"),
        ("/v1/chat/completions", b'{"model":"m","messages":[{"content":"x"}]}', "messages[0].role"),
        (
            "/v1/chat/completions",
            b'{"model":"m","messages":[{"role":"user","content":5}]}',
            "messages[0].content",
        ),
        ("/v1/embeddings", b'{"model":"m"}', "input"),
    ],
)
def test_parse_rejects_malformed_bodies(path: str, raw: bytes, param: str | None) -> None:
    with pytest.raises(BadRequestError) as err:
        parse_body(path, raw)
    assert err.value.status == 400
    assert err.value.param == param
    assert err.value.to_openai()["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_parse_reads_prompt_forms() -> None:
    p = parse_body("/v1/completions", body(prompt=[1, 2, 3], stream=True, max_tokens=9))
    assert (p.api, p.prompt, p.stream, p.max_tokens) == (ApiKind.COMPLETIONS, "1 2 3", True, 9)
    chat = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}],
            },
        ],
        "stream_options": {"include_usage": True},
    }
    c = parse_body("/v1/chat/completions", json.dumps(chat).encode())
    assert (
        c.api is ApiKind.CHAT and "be brief" in c.prompt and c.prompt.index("be brief") < c.prompt.index("hi")
    )
    assert c.include_usage
    e = parse_body("/v1/embeddings", b'{"model":"m","input":["a","b"]}')
    assert e.api is ApiKind.EMBEDDINGS and e.prompt == "a\nb"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda c: (
                st.lists(c, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "model",
                            "prompt",
                            "messages",
                            "stream",
                            "max_tokens",
                            "input",
                            "role",
                            "content",
                            "x",
                        ]
                    ),
                    c,
                    max_size=5,
                )
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/other"]),
)
def test_parse_fuzz_only_raises_bad_request(raw: bytes, path: str) -> None:
    with contextlib.suppress(BadRequestError):
        parse_body(path, raw)


# ------------------------------------------------------------------ usage and rewrite back


def test_sse_usage_split_across_chunks_and_model_name_rewritten_back() -> None:
    stream = (
        b'data: {"id":"1","object":"text_completion","model":"tgt","choices":[{"text":"a"}]}\n\n'
        b'data: {"id":"1","object":"text_completion","model":"tgt","choices":[],'
        b'"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}}\n\n'
        b"data: [DONE]\n\n"
    )
    for cut in range(1, len(stream)):
        parser = SSEUsageParser()
        rw = ModelNameRewriter("tgt", "asked")
        out = b""
        for part in (stream[:cut], stream[cut:]):
            parser.feed(part)
            out += rw.feed(part)
        out += rw.feed(b"", end_of_stream=True)
        parser.close()
        assert parser.usage is not None and (parser.usage.prompt_tokens, parser.usage.completion_tokens) == (
            7,
            3,
        )
        assert parser.usage.cached_tokens == 2
        assert out == stream.replace(b'"model":"tgt"', b'"model":"asked"'), cut


def test_usage_from_json_field_names() -> None:
    u = usage_from_json(b'{"object":"response","usage":{"input_tokens":4,"output_tokens":5}}')
    assert u is not None and (u.prompt_tokens, u.completion_tokens) == (4, 5)
    assert usage_from_json(b'{"usage": null}') is None
    assert usage_from_json(b"not json usage") is None


# ------------------------------------------------------------------ director


async def test_unknown_model_is_404_known_model_scheduled_and_released() -> None:
    clock = FakeClock()
    ds = make_store(clock)
    d = make_director(ds, clock)
    with pytest.raises(ModelNotFoundError) as err:
        await d.handle_request(path="/v1/completions", headers={}, body=body(model="nope"))
    assert err.value.status == 404
    ctx = await d.handle_request(path="/v1/completions", headers={"X-Request-Id": "r1"}, body=body())
    assert ctx.request_id == "r1" and ctx.body == body()  # untouched bytes when not rewritten
    assert ds.endpoint(ctx.target.key).in_flight == 1  # type: ignore[union-attr]
    d.handle_response_complete(ctx)
    d.handle_response_complete(ctx)  # idempotent
    assert ds.endpoint(ctx.target.key).in_flight == 0  # type: ignore[union-attr]


async def test_no_candidates_is_503() -> None:
    clock = FakeClock()
    ds = make_store(clock)
    d = make_director(ds, clock)
    clock.t += 10  # every snapshot stale
    with pytest.raises(NoCapacityError) as err:
        await d.handle_request(path="/v1/completions", headers={}, body=body())
    assert err.value.status == 503


async def test_objective_by_header_then_by_model_name() -> None:
    clock = FakeClock()
    ds = make_store(clock)
    ds.upsert_objective(Objective(name="food-review", priority=10))
    ds.upsert_objective(Objective(name="gold", priority=50))
    d = make_director(ds, clock)
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(model="food-review"))
    assert (ctx.request.objective, ctx.request.priority) == ("food-review", 10)
    ctx2 = await d.handle_request(
        path="/v1/completions",
        headers={"x-gateway-inference-objective": "gold"},
        body=body(model="food-review"),
    )
    assert (ctx2.request.objective, ctx2.request.priority) == ("gold", 50)
    ctx3 = await d.handle_request(path="/v1/completions", headers={}, body=body())
    assert (ctx3.request.objective, ctx3.request.priority) == (None, 0)


async def test_weighted_rewrite_changes_body_and_is_undone_in_response() -> None:
    clock = FakeClock()
    ds = make_store(clock)
    ds.upsert_rewrite(
        ModelRewrite(
            name="split",
            rules=(
                RewriteRule(
                    match_models=("alias",),
                    targets=(
                        RewriteTarget(model="food-review", weight=3),
                        RewriteTarget(model=BASE, weight=1),
                    ),
                ),
            ),
        )
    )
    m = GatewayMetrics()
    d = make_director(ds, clock, metrics=m)
    seen: Counter[str] = Counter()
    for _ in range(400):
        ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(model="alias"))
        sent = json.loads(ctx.body)
        assert sent["model"] == ctx.request.target_model and sent["prompt"] == "hello"
        seen[ctx.request.target_model] += 1
        d.handle_response_headers(ctx, 200, {"Content-Type": "application/json"})
        resp = json.dumps({"model": ctx.request.target_model, "usage": {"prompt_tokens": 1}}).encode()
        out = d.handle_response_chunk(ctx, resp, end_of_stream=True)
        assert json.loads(out)["model"] == "alias"
        d.handle_response_complete(ctx)
    assert 0.65 < seen["food-review"] / 400 < 0.85
    decisions = samples(m, "inference_extension_model_rewrite_decisions_total")
    assert sum(decisions.values()) == 400


async def test_scheduler_avoids_busy_endpoint_and_retry_moves_on() -> None:
    clock = FakeClock()
    ds = make_store(clock)
    keys = [e.key for e in ds.endpoints()]
    ds.update_metrics(
        keys[0], EndpointMetrics(updated_at=clock.now(), waiting_queue_size=20, kv_cache_usage=0.9)
    )
    d = make_director(ds, clock, max_attempts=2)
    for _ in range(20):
        ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(prompt=f"p{_}"))
        assert ctx.target.key != keys[0]
        d.handle_response_complete(ctx)
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body())
    first = ctx.target.key
    nxt = d.retry_target(ctx)
    assert nxt is not None and nxt.key != first and ctx.attempts == 2
    assert ds.endpoint(first).in_flight == 0 and ds.endpoint(nxt.key).in_flight == 1  # type: ignore[union-attr]
    assert d.retry_target(ctx) is None  # attempts exhausted
    d.handle_response_complete(ctx)
    assert all(e.in_flight == 0 for e in ds.endpoints())


async def test_metrics_recorded_for_success_and_errors() -> None:
    clock = FakeClock()
    ds = make_store(clock)
    m = GatewayMetrics()
    d = make_director(ds, clock, metrics=m)
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(stream=True))
    assert samples(m, "inference_objective_running_requests")[(("model_name", BASE),)] == 1
    d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    clock.t += 0.5
    d.handle_response_chunk(
        ctx,
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":10}}\n\n',
        end_of_stream=False,
    )
    d.handle_response_chunk(ctx, b"data: [DONE]\n\n", end_of_stream=True)
    d.handle_response_complete(ctx)
    labels = (("model_name", BASE), ("target_model_name", BASE))
    assert samples(m, "inference_objective_request_total")[(*labels[:1], ("priority", "0"), labels[1])] == 1
    assert samples(m, "inference_objective_output_tokens_sum")[labels] == 10
    assert samples(m, "inference_objective_input_tokens_sum")[labels] == 5
    assert samples(m, "inference_objective_normalized_time_per_output_token_seconds_sum")[
        labels
    ] == pytest.approx(0.05)
    assert samples(m, "inference_objective_running_requests")[(("model_name", BASE),)] == 0
    with pytest.raises(RequestError):
        await d.handle_request(path="/v1/completions", headers={}, body=b"{bad")
    errors = samples(m, "inference_objective_request_error_total")
    assert errors[(("error_code", "BadRequest"), ("model_name", ""), ("target_model_name", ""))] == 1
