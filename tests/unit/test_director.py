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
from infergate.requestcontrol.parsing import api_kind_for_path, parse_body, rewrite_model
from infergate.requestcontrol.usage import (
    ModelNameRewriter,
    SSEUsageParser,
    events_before_tokens,
    usage_from_json,
)
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.telemetry import GatewayMetrics
from infergate.types import (
    ApiKind,
    EndpointMeta,
    EndpointMetrics,
    InferenceRequest,
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


def test_sse_events_counted_at_every_split_without_done_or_text_lookalikes() -> None:
    """Each ``data:`` event but ``[DONE]`` counts once however the stream is cut; ``data:`` or
    ``[DONE]`` inside generated text is no event (a JSON string holds no raw newline)."""
    stream = (
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"\\ndata: [DONE]"}}]}\n\n'
        b'data:{"choices":[{"delta":{"content":"x"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"y"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    for cut in range(len(stream) + 1):
        parser = SSEUsageParser()
        parser.feed(stream[:cut])
        parser.feed(stream[cut:])
        parser.close()
        parser.close()  # the director may close twice
        assert parser.events == 4, cut
        assert parser.usage is None
    unterminated = SSEUsageParser()
    unterminated.feed(b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[{"text":"b"}]}')
    unterminated.close()
    assert unterminated.events == 2


@pytest.mark.parametrize(
    ("api", "body", "skip"),
    [
        (ApiKind.COMPLETIONS, {"prompt": "p"}, 0),
        (ApiKind.COMPLETIONS, {"prompt": [1, 2, 3]}, 0),  # token ids: one prompt
        (ApiKind.CHAT, {"messages": []}, 1),  # the role event first
        (ApiKind.CHAT, {"messages": [], "n": 1}, 1),
        (ApiKind.CHAT, {"messages": [], "n": 2}, None),  # interleaved choices
        (ApiKind.COMPLETIONS, {"prompt": ["a", "b"]}, None),  # a batch
        (ApiKind.MESSAGES, {"messages": []}, None),  # events of its own
        (ApiKind.OTHER, None, None),
    ],
)
def test_events_count_tokens_only_where_one_event_is_one_step(
    api: ApiKind, body: dict[str, object] | None, skip: int | None
) -> None:
    req = InferenceRequest(request_id="r", model="m", target_model="m", api=api, body=body)
    assert events_before_tokens(req) == skip


def test_usage_from_json_field_names() -> None:
    u = usage_from_json(b'{"object":"response","usage":{"input_tokens":4,"output_tokens":5}}')
    assert u is not None and (u.prompt_tokens, u.completion_tokens) == (4, 5)
    assert usage_from_json(b'{"usage": null}') is None
    assert usage_from_json(b"not json usage") is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # the generated text quotes a usage object: escaped, so never taken for the real one
        (
            b'{"text":"say \\"usage\\": {\\"prompt_tokens\\": 9}",'
            b'"usage":{"prompt_tokens":2,"completion_tokens":3}}',
            (2, 3),
        ),
        # the last "usage" token is a value, not a key: the whole body is decoded instead
        (b'{"usage":{"prompt_tokens":2,"completion_tokens":3},"object":"usage"}', (2, 3)),
        # a nested "usage" after the real one without token counts: the whole body decides
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":1},"meta":{"usage":{"note":1}}}', (5, 1)),
        (b'{"response":{"usage":{"input_tokens":7,"output_tokens":1}}}', (7, 1)),
        (b'{"text":"\xc3\xa9t\xc3\xa9", "usage" :\n {"prompt_tokens":1,"completion_tokens":2}}', (1, 2)),
    ],
)
def test_usage_from_json_reads_the_usage_key_not_text_that_mentions_it(
    body: bytes, expected: tuple[int, int]
) -> None:
    u = usage_from_json(body)
    assert u is not None and (u.prompt_tokens, u.completion_tokens) == expected


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


# ------------------------------------------------------------------ access policy and limits (HARDEN)


async def test_trusted_key_headers_cannot_reach_a_model_outside_its_scope() -> None:
    """A key allowed to send control headers is still judged on the final target model."""
    from infergate.errors import PermissionDeniedError
    from infergate.servers.auth import ApiKeyStore

    clock = FakeClock()
    ds = make_store(clock)
    ds.upsert_objective(Objective(name="food-review", priority=10))
    d = make_director(ds, clock)
    keys = {"k-food": {"objectives": ["food-review"], "control_headers": True}}
    d.configure_access(authenticator=ApiKeyStore.from_mapping(keys))
    trusted = {"x-api-key": "k-food"}
    ctx = await d.handle_request(path="/v1/completions", headers=trusted, body=body(model="food-review"))
    d.handle_response_complete(ctx)
    for extra, model in (
        ({"x-gateway-inference-objective": "food-review"}, BASE),  # objective header, other model
        ({"x-gateway-model-name-rewrite": "cad-fabricator"}, "food-review"),  # rewrite header
        ({"x-gateway-model-name-rewrite": BASE}, "food-review"),
    ):
        with pytest.raises(PermissionDeniedError) as err:
            await d.handle_request(
                path="/v1/completions", headers={**trusted, **extra}, body=body(model=model)
            )
        assert err.value.code == "permission_denied", extra
    assert all(ep.in_flight == 0 for ep in ds.endpoints())


def test_fairness_ids_are_capped_then_share_one_flow() -> None:
    from infergate.requestcontrol.access import OVERFLOW_FAIRNESS_ID, FairnessIds

    cap = FairnessIds(limit=3)
    assert [cap(f"t{i}") for i in range(5)] == ["t0", "t1", "t2", OVERFLOW_FAIRNESS_ID, OVERFLOW_FAIRNESS_ID]
    assert cap("t1") == "t1"  # ids seen before keep their own flow
    assert cap("x" * 129) == OVERFLOW_FAIRNESS_ID


async def test_api_keys_401_before_parsing_then_403_by_objective() -> None:
    from infergate.errors import AuthenticationError, PermissionDeniedError
    from infergate.requestcontrol.access import RequestLimits
    from infergate.servers.auth import ApiKeyStore

    clock = FakeClock()
    ds = make_store(clock)
    ds.upsert_objective(Objective(name="food-review", priority=10))
    m = GatewayMetrics()
    d = make_director(ds, clock, metrics=m)
    d.configure_access(
        authenticator=ApiKeyStore.from_mapping({"k-all": "*", "k-food": ["food-review"]}),
        limits=RequestLimits(max_messages=2),
    )
    with pytest.raises(AuthenticationError) as err401:
        await d.handle_request(path="/v1/completions", headers={}, body=b"{bad")
    assert err401.value.status == 401
    with pytest.raises(AuthenticationError):
        await d.handle_request(path="/v1/completions", headers={"X-Api-Key": "k-al"}, body=body())
    ctx = await d.handle_request(
        path="/v1/completions", headers={"Authorization": "Bearer k-all"}, body=body()
    )
    d.handle_response_complete(ctx)
    food = {"x-api-key": "k-food"}
    ctx = await d.handle_request(path="/v1/completions", headers=food, body=body(model="food-review"))
    d.handle_response_complete(ctx)
    with pytest.raises(PermissionDeniedError) as err403:
        await d.handle_request(path="/v1/completions", headers=food, body=body())
    assert err403.value.status == 403 and err403.value.code == "permission_denied"
    # the objective header is a control header: a key without the permission may not send it
    hdrs = {**food, "x-gateway-inference-objective": "food-review"}
    with pytest.raises(PermissionDeniedError) as denied:
        await d.handle_request(path="/v1/completions", headers=hdrs, body=body())
    assert denied.value.code == "control_header_not_allowed"
    assert denied.value.param == "x-gateway-inference-objective"
    assert all(ep.in_flight == 0 for ep in ds.endpoints())
    errors = samples(m, "inference_objective_request_error_total")
    assert (
        errors[(("error_code", "Unauthorized"), ("model_name", "unknown"), ("target_model_name", "unknown"))]
        == 2
    )
    assert errors[(("error_code", "Forbidden"), ("model_name", BASE), ("target_model_name", BASE))] == 1
    assert errors[(("error_code", "Forbidden"), ("model_name", ""), ("target_model_name", ""))] == 1
    # max_messages comes from the limits
    chat = json.dumps({"model": BASE, "messages": [{"role": "user", "content": "x"}] * 3}).encode()
    with pytest.raises(BadRequestError) as err400:
        await d.handle_request(path="/v1/chat/completions", headers={"x-api-key": "k-all"}, body=chat)
    assert err400.value.param == "messages"


async def test_max_tokens_ceiling_uses_objective_then_model_then_default() -> None:
    from infergate.requestcontrol.access import RequestLimits

    clock = FakeClock()
    ds = make_store(clock)
    ds.upsert_objective(Objective(name="food-review", priority=10))
    d = make_director(ds, clock)
    d.configure_access(
        limits=RequestLimits(max_tokens=50, objective_max_tokens={"food-review": 10, BASE: 20})
    )
    assert not d.auth_enabled and d.authenticate({}) is None
    for model, value, ok in [
        ("food-review", 10, True),
        ("food-review", 11, False),
        (BASE, 20, True),
        (BASE, 21, False),
    ]:
        raw = body(model=model, max_tokens=value)
        if ok:
            d.handle_response_complete(await d.handle_request(path="/v1/completions", headers={}, body=raw))
        else:
            with pytest.raises(BadRequestError) as err:
                await d.handle_request(path="/v1/completions", headers={}, body=raw)
            assert err.value.param == "max_tokens" and err.value.code == "max_tokens_exceeded"
    # an objective named by header applies its own ceiling; no max_tokens at all is not limited
    with pytest.raises(BadRequestError):
        await d.handle_request(
            path="/v1/completions",
            headers={"x-gateway-inference-objective": "food-review"},
            body=body(max_tokens=15),
        )
    raw = json.dumps({"model": BASE, "prompt": "x"}).encode()
    d.handle_response_complete(await d.handle_request(path="/v1/completions", headers={}, body=raw))


# Values a client might put in any field, including the awkward ones: huge and negative numbers,
# floats, lone surrogates (from JSON escapes), deep nesting, empty containers.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "a\udfffb", "😀", "", " ", "user", "text", "*"])
)
_values = st.recursive(
    _scalars,
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(
            st.sampled_from(["role", "content", "type", "text", "include_usage", "x"]), c, max_size=4
        )
    ),
    max_leaves=16,
)
_FIELDS = [
    "model",
    "prompt",
    "messages",
    "input",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
]


@st.composite
def _request_bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-shaped OpenAI bodies with some fields replaced by arbitrary values, serialised
    by a client that escapes non-ASCII (so lone surrogates arrive as ``\\ud800`` escapes), or raw
    bytes with a mangled byte spliced in."""
    data: dict[str, object] = {"model": draw(st.sampled_from(["m", BASE, "food-review"]))}
    kind = draw(st.sampled_from(["prompt", "messages", "input"]))
    if kind == "messages":
        n = draw(st.integers(min_value=0, max_value=4))
        data["messages"] = [{"role": "user", "content": draw(st.text(max_size=8))} for _ in range(n)]
    else:
        data[kind] = draw(st.text(max_size=8) | st.lists(st.integers(0, 50_000), max_size=4))
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3, unique=True)):
        data[name] = draw(_values)
    raw = json.dumps(data, ensure_ascii=True).encode()
    if draw(st.booleans()):
        return raw
    cut = draw(st.integers(min_value=0, max_value=len(raw)))
    return raw[:cut] + draw(st.binary(max_size=3)) + raw[cut:]


@settings(max_examples=400, deadline=None)
@given(
    _request_bodies(),
    st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses"]),
)
def test_parser_property_bad_request_or_consistent_result(raw: bytes, path: str) -> None:
    """Any input yields a 400 naming at most a real parameter, or a ParsedBody whose fields hold
    their invariants and whose body can be re-serialised for a model rewrite."""
    try:
        p = parse_body(path, raw, max_messages=3)
    except BadRequestError as err:
        assert err.status == 400 and err.message
        assert err.param is None or err.param.split("[")[0].split(".")[0] in {*_FIELDS, "messages"}
        return
    assert isinstance(p.model, str) and p.model.strip()
    assert isinstance(p.stream, bool) and isinstance(p.include_usage, bool)
    assert p.max_tokens is None or (isinstance(p.max_tokens, int) and 0 <= p.max_tokens <= 10_000_000)
    assert isinstance(p.prompt, str)
    p.prompt.encode("utf-8")  # hashable for prefix affinity: never a lone surrogate
    assert json.loads(rewrite_model(p, "target"))["model"] == "target"
    assert p.api is api_kind_for_path(path)


def test_parser_extremes_are_bad_requests() -> None:
    cases = [
        b"[" * 200_000,
        b'{"model":"m","prompt":"x","max_tokens":' + b"9" * 5000 + b"}",
        b'{"model":"m","prompt":"\\ud800"}',
        b'{"model":"\\udc00x","prompt":"x"}',
        b'{"model":"m","prompt":"a\\uDBFFb"}',  # upper case
        b'{"model":"m","prompt":"x","max_tokens":Infinity}',
        b"\xef\xbb\xbf{}",
        b" \n\t ",
    ]
    for raw in cases:
        with pytest.raises(BadRequestError):
            parse_body("/v1/completions", raw)
    ok = parse_body("/v1/completions", b'{"model":"m","prompt":"\\ud83d\\ude00"}')  # a valid escaped pair
    assert ok.prompt == "😀"
