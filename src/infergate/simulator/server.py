"""The simulator's HTTP server: vLLM's OpenAI API, admin and router-facing endpoints on aiohttp.

:class:`SimServer` owns one engine, its wall-clock driver, the metrics registry and the aiohttp
application. Handlers translate HTTP into ``EngineRequest``s and engine outputs back into vLLM's
shapes (``openai_api`` for shapes, ``generation`` for streams). Every error is answered in vLLM's JSON
envelope; nothing escapes as a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from infergate.simulator import anthropic_api, disagg, load_report, lora_api, validation
from infergate.simulator import openai_api as oa
from infergate.simulator import peer_api as peer
from infergate.simulator.args import SimulatorArgs
from infergate.simulator.drivers import RealtimeDriver, profile_frontend
from infergate.simulator.engine import Engine, EngineRequest
from infergate.simulator.generation import ChoiceSpec, Delta, choice_events, merged_events
from infergate.simulator.metrics import SimMetrics
from infergate.simulator.profile import get_profile
from infergate.simulator.scaled import make_engine
from infergate.tokenization.load import load_tokenizer

log = logging.getLogger("infergate.simulator")

VLLM_VERSION = "0.33.0"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )


def _error(exc: oa.ApiError) -> web.Response:
    return _json(exc.body(), exc.status)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """vLLM's error envelope for our errors, FastAPI's ``{"detail"}`` for routing errors, no tracebacks."""
    try:
        return await handler(request)
    except oa.ApiError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        if exc.status in (404, 405):
            return _json({"detail": "Not Found" if exc.status == 404 else "Method Not Allowed"}, exc.status)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(oa.ApiError(500, f"Internal server error: {type(exc).__name__}"))


class SimServer:
    """One simulated vLLM server process (engine + driver + HTTP)."""

    def __init__(self, args: SimulatorArgs) -> None:
        self.args = args
        self.tokenizer = load_tokenizer(args.tokenizer)  # a bad --tokenizer fails before start
        config = args.engine_config()
        if args.tokenizer is not None:
            config = dataclasses.replace(config, filler_ids=self.tokenizer.filler_ids)
        self.config = config
        get_profile(self.config.profile)  # unknown profile → ValueError before anything starts
        self.engine: Engine = make_engine(self.config, args.time_scale)
        bos = self.tokenizer.bos_id
        self._bos: list[int] = [] if bos is None else [bos]
        overhead = self.engine.profile.api_overhead_ms / 1000.0 * args.time_scale
        self.driver = RealtimeDriver(self.engine, api_overhead=overhead, **profile_frontend(self.engine))
        self.max_model_len = self.config.max_model_len
        self.created = int(time.time())
        self.base_root = args.model
        self.lora_parents: dict[str, str] = {}  # adapter → base model shown as `parent` in /v1/models
        for mod in args.lora_modules:
            self.engine.add_lora(mod.name, mod.path)
            if mod.base_model_name:
                self.lora_parents[mod.name] = mod.base_model_name
        stats = self.engine.stats()
        self.metrics = SimMetrics(
            self.engine.stats,
            model_name=args.model_name,
            max_model_len=self.max_model_len,
            legacy=args.legacy_metrics,
            lora_enabled=self.config.enable_lora,
            cache_info={
                "block_size": str(stats.block_size),
                "enable_prefix_caching": str(self.config.enable_prefix_caching),
                "gpu_memory_utilization": str(self.config.gpu_memory_utilization),
                "num_gpu_blocks": str(stats.num_gpu_blocks),
                "prefix_caching_hash_algo": self.config.prefix_caching_hash_algo,
            },
        )
        self.driver.add_step_listener(self._record_step)
        self.server_load = load_report.ServerLoad(args.enable_server_load_tracking)
        self.kv_publisher: Any = None
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.port = args.port

    def _record_step(self) -> None:
        engine = self.engine
        self.metrics.observe_step(engine.last_step_prompt_tokens, engine.last_step_tokens)
        if self.config.enable_lora:
            running, waiting = engine.lora_state()
            self.metrics.record_lora(self.config.max_loras, running, waiting)

    # ------------------------------------------------------------------ lifecycle

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[_error_middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.models)
        r.add_post("/v1/load_lora_adapter", self.load_lora)
        r.add_post("/v1/unload_lora_adapter", self.unload_lora)
        r.add_get("/health", self.health)
        r.add_get("/load", self.load)
        r.add_get("/ping", self.health)
        r.add_get("/version", self.version)
        r.add_get("/metrics", self.metrics_handler)
        r.add_post("/tokenize", self.tokenize)
        r.add_post("/detokenize", self.detokenize)
        r.add_post("/v1/completions/render", self.render_completion)
        r.add_post("/v1/chat/completions/render", self.render_chat)
        r.add_post("/v1/messages", functools.partial(anthropic_api.messages, self))
        r.add_post("/v1/messages/count_tokens", functools.partial(anthropic_api.count_tokens, self))
        for path, handler in peer.routes(self).items():
            r.add_get(path, handler)
        r.add_get("/kv_event_sources", self.kv_event_sources)
        return app

    async def start(self) -> None:
        """Start the engine driver and listen; ``port`` 0 picks a free port (see :attr:`port`)."""
        if self.args.kv_events_endpoint:
            from infergate.simulator.kvevents import KvEventPublisher

            self.kv_publisher = KvEventPublisher(
                self.args.kv_events_endpoint,
                topic=self.args.kv_events_topic,
                encoding=self.args.kv_events_encoding,
            )
            self.engine.set_kv_event_sink(self.kv_publisher.publish)
        await self.driver.start()
        runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.args.host, self.args.port, reuse_address=True)
        await site.start()
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close connections (in-flight requests are aborted in the engine), then stop the driver."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.driver.stop()
        if self.kv_publisher is not None:
            self.kv_publisher.close()
            self.kv_publisher = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.args.host in ("0.0.0.0", "", "::") else self.args.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ helpers

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise oa.ApiError(400, f"Invalid JSON in request body: {exc}") from None
        if not isinstance(data, dict):
            raise oa.ApiError(400, "Request body must be a JSON object.")
        return data

    def _resolve(self, model: str | None) -> tuple[str, str | None]:
        """(name echoed in responses, LoRA adapter or None); 404 for unknown names."""
        if model is None or model in self.args.served_model_names:
            return (model or self.args.model_name), None
        if model in self.engine.loras():
            return model, model
        raise oa.ApiError(
            404,
            oa.unknown_model_message(model, self.args.served_model_names),
            type_="NotFoundError",
            param="model",
        )

    def _completion_ids(self, body: dict[str, Any]) -> tuple[list[list[int]], list[str | None]]:
        """Token ids of each prompt, length-checked, and its text (None for token-id prompts, which
        are decoded only after their ids passed validation). Text prompts get the BOS token first,
        as Llama-3's tokenizer does with vLLM's default ``add_special_tokens=True``."""
        add_bos = oa.as_bool(body, "add_special_tokens", True)
        ids: list[list[int]] = []
        texts: list[str | None] = []
        for p in oa.completion_prompts(body):
            if isinstance(p, list):
                validation.check_token_len(len(p), self.max_model_len)
                ids.append(p)
                texts.append(None)
            else:
                ids.append(self._encode_prompt(p, self._bos if add_bos else []))
                texts.append(p)
        return ids, texts

    def _chat_ids(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> list[int]:
        """The chat template already starts with BOS (vLLM's chat default ``add_special_tokens=False``)."""
        prefix = self._bos if oa.as_bool(body, "add_special_tokens", False) else []
        return self._encode_prompt(self.tokenizer.apply_chat_template(messages), prefix)

    def _encode_prompt(self, text: str, prefix: list[int]) -> list[int]:
        """Tokenise a prompt text as vLLM's renderer does: bounded by characters first, tokenised
        only up to ``max_model_len + 1`` tokens, then bounded by tokens (validation.py)."""
        mml = self.max_model_len
        validation.check_text_len(len(text), mml, self.tokenizer.max_chars_per_token)
        ids = prefix + self.tokenizer.encode(text, limit=mml + 1 - len(prefix))
        validation.check_token_len(len(ids), mml)
        return ids

    def _specs(
        self,
        rid: str,
        prompts: list[list[int]],
        params: oa.GenerationParams,
        lora: str | None,
        default_max: int | None,
        transfer: disagg.TransferRequest,
    ) -> list[ChoiceSpec]:
        """Engine requests for every (prompt, n) pair, after vLLM's sampling-parameter and
        token-id checks, all of which run before anything proportional to ``n`` is built."""
        mml = self.max_model_len
        prepared: list[tuple[list[int], int]] = []
        for ids in prompts:
            max_tokens = validation.clamp_max_tokens(params.max_tokens, default_max, len(ids), mml)
            validation.check_n(params.n, self.args.max_n_sequences, params.temperature)
            validation.check_temperature(params.temperature)
            validation.check_min_tokens(params.min_tokens, max_tokens)
            validation.check_token_ids(ids, self.tokenizer.max_token_id)
            prepared.append((ids, max_tokens))
        specs = []
        for p_idx, (ids, max_tokens) in enumerate(prepared):
            for j in range(params.n):
                index = p_idx * params.n + j
                req = EngineRequest(
                    request_id=f"{rid}-{index}",
                    prompt_token_ids=ids,
                    max_tokens=max_tokens,
                    min_tokens=params.min_tokens,
                    ignore_eos=params.ignore_eos,
                    lora_name=lora,
                    remote_prefill_tokens=transfer.remote_prefill_tokens,
                    remote_decode=transfer.remote_decode,
                )
                try:
                    self.engine.validate(req)  # refuse before any header is sent (streams too)
                except ValueError as exc:
                    raise oa.ApiError(400, str(exc)) from None
                echo = (ids[1:] if ids[:1] == self._bos and len(ids) > 1 else ids) if self.args.echo else None
                specs.append(ChoiceSpec(index, req, params.stop, echo))
        return specs

    def _usage(self, prompt_tokens: int, completion_tokens: int, cached: int) -> dict[str, Any]:
        return oa.usage(prompt_tokens, completion_tokens, cached if self.args.prompt_tokens_details else None)

    # ------------------------------------------------------------------ generation

    async def completions(self, request: web.Request) -> web.StreamResponse:
        with self.server_load.track():
            return await self._completions(request)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        with self.server_load.track():
            return await self._chat_completions(request)

    async def load(self, request: web.Request) -> web.Response:
        """vLLM's ``GET /load`` (see ``load_report``)."""
        return _json({"server_load": self.server_load.value})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        params = oa.parse_params(body, "completion")
        model, lora = self._resolve(params.model)
        validation.check_output_budget(params.max_tokens, params.max_tokens_param, self.max_model_len)
        prompts, texts = self._completion_ids(body)
        rid = f"cmpl-{params.request_id or request.headers.get('X-Request-Id') or uuid.uuid4().hex}"
        transfer = disagg.parse_request(body, self.args.kv_transfer, self.config.block_size)
        specs = self._specs(rid, prompts, params, lora, 16, transfer)
        echo_text = None
        if params.echo:
            pairs = zip(texts, prompts, strict=True)
            echo_text = [t if t is not None else self.tokenizer.decode(p) for t, p in pairs]
        return await self._respond(request, params, model, rid, specs, echo_text)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        params, model, rid, specs = self.chat_run(request, await self._body(request))
        return await self._respond(request, params, model, rid, specs, None)

    def chat_run(
        self, request: web.Request, body: dict[str, Any]
    ) -> tuple[oa.GenerationParams, str, str, list[ChoiceSpec]]:
        """A chat request checked and tokenised: its parameters, model, id and engine requests
        (also what the Anthropic Messages endpoints run, :mod:`.anthropic_api`)."""
        params = oa.parse_params(body, "chat")
        messages = oa.chat_messages(body)
        model, lora = self._resolve(params.model)
        validation.check_output_budget(params.max_tokens, params.max_tokens_param, self.max_model_len)
        ids = self._chat_ids(body, messages)
        rid = f"chatcmpl-{params.request_id or request.headers.get('X-Request-Id') or uuid.uuid4().hex}"
        transfer = disagg.parse_request(body, self.args.kv_transfer, self.config.block_size)
        return params, model, rid, self._specs(rid, [ids], params, lora, None, transfer)

    def choice_events(self, spec: ChoiceSpec, *, streaming: bool) -> Any:
        """The :class:`Delta` events of one engine request."""
        return choice_events(self.driver, self.tokenizer, self.metrics, spec, streaming=streaming)

    async def _respond(
        self,
        request: web.Request,
        params: oa.GenerationParams,
        model: str,
        rid: str,
        specs: list[ChoiceSpec],
        echo_text: list[str] | None,
    ) -> web.StreamResponse:
        self.metrics.n_param.observe(params.n)
        streaming = params.stream

        def make(spec: ChoiceSpec) -> Any:
            return self.choice_events(spec, streaming=streaming)

        created = int(time.time())
        if not streaming:
            texts: dict[int, list[str]] = {s.index: [] for s in specs}
            finals: dict[int, Delta] = {}
            async for d in merged_events(make, specs):
                texts[d.index].append(d.text)
                if d.finish_reason is not None:
                    finals[d.index] = d
            choices = []
            n = max(1, params.n)
            for s in specs:
                f = finals[s.index]
                text = "".join(texts[s.index])
                if echo_text is not None:
                    text = echo_text[s.index // n] + text
                choices.append(oa.ChoiceResult(s.index, text, f.finish_reason, f.stop_reason, f.num_tokens))
            prompt_tokens = sum(len(s.request.prompt_token_ids) for s in specs[::n])
            cached = finals[specs[0].index].cached_tokens
            usage = self._usage(prompt_tokens, sum(c.num_tokens for c in choices), cached)
            build = oa.chat_response if params.kind == "chat" else oa.completion_response
            out = build(rid, created, model, choices, usage)
            sent = finals[specs[0].index].kv_blocks
            if sent is not None and self.args.kv_transfer is not None:
                out[disagg.FIELD] = disagg.response_params(self.args.kv_transfer, sent, rid)
            resp = _json(out)
            fmt = request.headers.get(load_report.FORMAT_HEADER, "")
            resp.headers.update(load_report.orca_header(fmt, self.engine.stats()))
            return resp
        return await self._stream(request, params, model, rid, specs, echo_text, make, created)

    async def _stream(
        self,
        request: web.Request,
        params: oa.GenerationParams,
        model: str,
        rid: str,
        specs: list[ChoiceSpec],
        echo_text: list[str] | None,
        make: Callable[[ChoiceSpec], Any],
        created: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        chat = params.kind == "chat"
        n = max(1, params.n)
        prompt_tokens = sum(len(s.request.prompt_token_ids) for s in specs[::n])
        tokens: dict[int, int] = {s.index: 0 for s in specs}
        cached = 0

        async def send(obj: dict[str, Any]) -> None:
            await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

        def running_usage() -> dict[str, Any] | None:
            if not params.continuous_usage:
                return None
            return self._usage(prompt_tokens, sum(tokens.values()), cached)

        # vLLM sends nothing before the engine's first output: the role chunks (chat) go out with
        # it, and an echoed prompt (completions) travels in the same chunk as its choice's first
        # text, so a client's or gateway's first byte is the first token (serving.py, first_iteration)
        started = False
        echo_pending: dict[int, str] = {}
        if echo_text is not None:
            echo_pending = {s.index: echo_text[s.index // n] for s in specs}
        try:
            templates = {
                s.index: oa.delta_chunk_template(params.kind, rid, created, model, s.index) for s in specs
            }
            fast = not params.continuous_usage
            async for d in merged_events(make, specs):
                cached = d.cached_tokens
                if not started:  # the role chunks count no completion tokens yet, as in vLLM
                    started = True
                    if chat:
                        role = {"role": "assistant", "content": ""}
                        for s in specs:
                            await send(
                                oa.chat_chunk(
                                    rid, created, model, s.index, role, None, usage_=running_usage()
                                )
                            )
                tokens[d.index] = d.num_tokens
                text = d.text
                if echo_pending:
                    text = echo_pending.pop(d.index, "") + text
                if not text and d.finish_reason is None:
                    continue
                if fast and d.finish_reason is None:
                    prefix, suffix = templates[d.index]
                    await resp.write(prefix + json.dumps(text).encode() + suffix)
                    continue
                if chat:
                    delta = {"content": text}
                    chunk = oa.chat_chunk(
                        rid, created, model, d.index, delta, d.finish_reason, d.stop_reason, running_usage()
                    )
                else:
                    chunk = oa.completion_chunk(
                        rid, created, model, d.index, text, d.finish_reason, d.stop_reason, running_usage()
                    )
                await send(chunk)
            if params.include_usage:
                usage = self._usage(prompt_tokens, sum(tokens.values()), cached)
                await send(oa.usage_chunk(params.kind, rid, created, model, usage))
        except oa.ApiError as exc:
            await send(exc.body())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ models and LoRA

    async def models(self, request: web.Request) -> web.Response:
        cards = [
            oa.model_card(
                name,
                self.created,
                root=self.base_root,
                parent=None,
                max_model_len=self.max_model_len,
                perm_id=f"modelperm-{uuid.uuid4().hex}",
            )
            for name in self.args.served_model_names
        ]
        for name, path in self.engine.loras().items():
            cards.append(
                oa.model_card(
                    name,
                    self.created,
                    root=path,
                    parent=self.lora_parents.get(name, self.args.model_name),
                    max_model_len=None,
                    perm_id=f"modelperm-{uuid.uuid4().hex}",
                )
            )
        return _json({"object": "list", "data": cards})

    def _require_runtime_lora(self) -> None:
        if not self.args.allow_runtime_lora_updating:
            raise web.HTTPNotFound()

    async def load_lora(self, request: web.Request) -> web.Response:
        self._require_runtime_lora()
        body = await self._body(request)
        name, path, inplace = lora_api.check_load(
            body, self.args.served_model_names, self.engine.loras(), self.config.enable_lora
        )
        # The real endpoint returns after the adapter is read from disk (calibration §2).
        await asyncio.sleep(
            get_profile(self.config.profile).lora_disk_load_ms / 1000.0 * self.args.time_scale
        )
        if inplace and name in self.engine.loras():
            self.engine.remove_lora(name)
        try:
            self.engine.add_lora(name, path)
        except ValueError as exc:
            raise oa.ApiError(400, str(exc), type_="InvalidUserInput") from None
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: web.Request) -> web.Response:
        self._require_runtime_lora()
        name = lora_api.check_unload(await self._body(request), self.engine.loras())
        self.engine.remove_lora(name)
        self.lora_parents.pop(name, None)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # ------------------------------------------------------------------ small endpoints

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def kv_event_sources(self, request: web.Request) -> web.Response:
        """vLLM's publisher discovery: sources keyed by data-parallel rank, ``{}`` without events."""
        pub = self.kv_publisher
        return _json({} if pub is None else {"0": pub.source()})

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": VLLM_VERSION})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _prompt_ids(self, body: dict[str, Any]) -> list[int]:
        if "messages" in body:
            return self._chat_ids(body, oa.chat_messages(body))
        return self._completion_ids(body)[0][0]

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body.get("model") is not None:
            self._resolve(str(body["model"]))
        ids = self._prompt_ids(body)
        strs = (
            [self.tokenizer.decode([t]) for t in ids]
            if oa.as_bool(body, "return_token_strs", False)
            else None
        )
        return _json(
            {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": strs}
        )

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise oa.validation_error("tokens", "Field required (a list of token ids)")
        return _json({"prompt": self.tokenizer.decode(tokens)})

    def _render_entry(self, rid: str, ids: list[int], body: dict[str, Any], kind: oa.Kind) -> dict[str, Any]:
        params = oa.parse_params(body, kind)
        model, _ = self._resolve(params.model)
        room = self.max_model_len - len(ids)
        max_tokens = (
            params.max_tokens if params.max_tokens is not None else (16 if kind == "completion" else room)
        )
        return {
            "request_id": rid,
            "model": model,
            "token_ids": ids,
            "prompt": self.tokenizer.decode(ids),
            "sampling_params": {
                "n": params.n,
                "temperature": params.temperature,
                "max_tokens": max(1, min(max_tokens, room)),
                "min_tokens": params.min_tokens,
                "stop": list(params.stop),
                "ignore_eos": params.ignore_eos,
            },
        }

    async def render_completion(self, request: web.Request) -> web.Response:
        """vLLM's ``/v1/completions/render``: the tokenised prompts, one entry per prompt (a list)."""
        body = await self._body(request)
        prompts, _ = self._completion_ids(body)
        rid = f"cmpl-{uuid.uuid4().hex}"
        return _json([self._render_entry(rid, ids, body, "completion") for ids in prompts])

    async def render_chat(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ids = self._chat_ids(body, oa.chat_messages(body))
        return _json(self._render_entry(f"chatcmpl-{uuid.uuid4().hex}", ids, body, "chat"))
