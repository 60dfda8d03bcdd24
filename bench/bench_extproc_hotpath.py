"""The picker's own Python per request, without gRPC: the ext_proc servicer driven in process.

A fake stream context hands ``ExternalProcessor.Process`` the messages the local Envoy sends for
one non-streaming completion (request headers with ``protocol_config``, the buffered body,
response headers, the whole JSON answer) and collects the replies; the real Director (metrics
on) routes over one endpoint. CPU per request is ``time.process_time`` over ``--requests``
requests, so other load on the machine changes it little; what gRPC costs on top is measured by
``bench_envoy.py``. ``--profile out.prof`` writes a cProfile of one repetition.

    .venv/bin/python bench/bench_extproc_hotpath.py [--requests 20000] [--reps 3] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from prometheus_client import CollectorRegistry

from infergate.config.picker import default_picker_config
from infergate.dataplanes.extproc.server import ExternalProcessor
from infergate.datastore.store import Datastore
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, EndpointMetrics

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENDPOINT = "10.0.0.1:8000"
_Mode = processing_mode_pb2.ProcessingMode.BodySendMode


def _headers(pairs: list[tuple[str, str]], *, eos: bool = False) -> pb.HttpHeaders:
    hv = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=hv), end_of_stream=eos)


def envoy_messages(i: int) -> list[pb.ProcessingRequest]:
    """What Envoy sends for one completion (its usual request headers, a fresh request id)."""
    body = json.dumps({"model": MODEL, "prompt": f"Say hello {i}.", "max_tokens": 1}).encode()
    answer = json.dumps(
        {
            "id": f"cmpl-{i}",
            "object": "text_completion",
            "model": MODEL,
            "choices": [{"index": 0, "text": "Hi", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    ).encode()
    head = pb.ProcessingRequest(
        request_headers=_headers(
            [
                (":authority", "127.0.0.1:8080"),
                (":path", "/v1/completions"),
                (":method", "POST"),
                (":scheme", "http"),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("user-agent", "Python/3.11 aiohttp/3.9"),
                ("accept", "*/*"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", f"6f1c2e4a-0000-4000-8000-{i:012d}"),
            ]
        )
    )
    head.protocol_config.request_body_mode = _Mode.BUFFERED
    head.protocol_config.response_body_mode = _Mode.STREAMED
    return [
        head,
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(
            response_headers=_headers(
                [
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("content-length", str(len(answer))),
                    ("date", "Wed, 02 Dec 2026 16:00:00 GMT"),
                    ("server", "uvicorn"),
                ]
            )
        ),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=answer, end_of_stream=True)),
    ]


class FakeStream:
    """The reader/writer side of one ext_proc stream, without gRPC."""

    def __init__(self, messages: list[pb.ProcessingRequest]) -> None:
        self._messages = iter(messages)
        self.replies: list[pb.ProcessingResponse] = []

    async def read(self) -> Any:
        return next(self._messages, grpc.aio.EOF)

    async def write(self, reply: pb.ProcessingResponse) -> None:
        self.replies.append(reply)


def build() -> tuple[ExternalProcessor, Datastore]:
    ds = Datastore()
    host, port = ENDPOINT.rsplit(":", 1)
    ds.upsert_endpoint(EndpointMeta(name="e", address=host, port=int(port)))
    ds.set_models(ENDPOINT, frozenset({MODEL}))
    ds.update_metrics(ENDPOINT, EndpointMetrics(updated_at=ds.clock.now()))
    director = Director(
        datastore=ds,
        scheduler=build_scheduler(default_picker_config(lora=False)),
        flow=None,
        metrics=GatewayMetrics(CollectorRegistry()),
    )
    return ExternalProcessor(director, endpoints=ds), ds


async def run(proc: ExternalProcessor, ds: Datastore, streams: list[list[pb.ProcessingRequest]]) -> float:
    start = time.process_time()
    scraped = 0.0
    for messages in streams:
        now = ds.clock.now()
        if now - scraped > 0.1:  # keep the endpoint's metrics fresh, as the scraper would
            ds.update_metrics(ENDPOINT, EndpointMetrics(updated_at=now))
            scraped = now
        fake = FakeStream(messages)
        await proc.Process(None, fake)  # type: ignore[arg-type]
        routed = fake.replies[1].request_body.response.header_mutation.set_headers
        assert len(fake.replies) == 4 and routed, fake.replies
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", type=Path)
    args = ap.parse_args()
    proc, ds = build()
    streams = [envoy_messages(i) for i in range(args.requests)]
    asyncio.run(run(proc, ds, streams[:1000]))  # warm-up
    per_request = []
    for _ in range(args.reps):
        per_request.append(1e6 * asyncio.run(run(proc, ds, streams)) / args.requests)
    print(f"servicer + Director CPU per request: {', '.join(f'{v:.1f}' for v in per_request)} µs")
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run(proc, ds, streams))
        prof.disable()
        prof.dump_stats(args.profile)


if __name__ == "__main__":
    main()
