"""``token-producer``: prompts rendered by the model server, against in-process simulators whose
tokenizer is a real ``tokenizer.json`` the gateway does not have.

* The render endpoint's ids are the server's own (and not what the gateway's built-in tokenizer
  would make of the prompt); a renderer that is down leaves the request without ids, counted.
* The gateway loaded with llm-d-router's split precise pipeline (token producer, precise
  producer, prefix-cache-scorer naming it) routes each tenant back to the endpoint holding its
  blocks: the KV events are keyed by the server's tokens, which only the render gives.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.picker import parse_picker_config
from infergate.scheduling.plugins.precise_prefix import PrecisePrefixScorer
from infergate.simulator.args import SimulatorArgs
from infergate.simulator.server import SimServer
from infergate.sources.token_producer import RenderTokenProducer
from infergate.tokenization.load import load_tokenizer
from infergate.types import ApiKind, InferenceRequest
from tests.integration.test_kvevents_routing import MODEL, TIMEOUT, listen_port, prompt, tenants_return_home
from tests.integration.test_sim_tokenization import tokenizer_json  # noqa: F401 (a fixture)
from tests.support import free_port, local_settings, static_pool_docs


def completion(text: str) -> InferenceRequest:
    return InferenceRequest(
        request_id="r", model=MODEL, target_model=MODEL, prompt=text, body={"prompt": text}
    )


async def test_rendered_ids_are_the_servers_own(tokenizer_json: Path) -> None:  # noqa: F811
    sim = SimServer(
        SimulatorArgs(host="127.0.0.1", port=0, served_model_names=(MODEL,), tokenizer=str(tokenizer_json))
    )
    await sim.start()
    producer = RenderTokenProducer(f"http://127.0.0.1:{sim.port}", MODEL, timeout=TIMEOUT)
    try:
        text = prompt(1, 0)
        ids = await producer.token_ids(completion(text))
        hf, builtin = load_tokenizer(str(tokenizer_json)), load_tokenizer(None)
        assert ids is not None and list(ids) == [hf.bos_id, *hf.encode(text)]
        assert list(ids) != [builtin.bos_id, *builtin.encode(text)]  # what the gateway alone would use
        chat = InferenceRequest(
            request_id="c",
            model=MODEL,
            target_model=MODEL,
            api=ApiKind.CHAT,
            body={"messages": [{"role": "user", "content": text}]},
        )
        chat_ids = await producer.token_ids(chat)
        assert chat_ids is not None and len(chat_ids) > len(ids) - 1  # the template's tokens too
        token_prompt = InferenceRequest(
            request_id="t", model=MODEL, target_model=MODEL, body={"prompt": [5, 6, 7]}
        )
        assert await producer.token_ids(token_prompt) == (5, 6, 7)  # ids already: no render
        assert producer.failures == 0
    finally:
        await sim.stop()
    down = RenderTokenProducer(f"http://127.0.0.1:{free_port()}", MODEL, timeout=TIMEOUT)
    assert await down.token_ids(completion("hello there")) is None
    assert down.failures == 1


SPLIT_PIPELINE = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
  parameters:
    modelName: {model}
    vllm: {{url: "http://127.0.0.1:{render_port}"}}
- type: endpoint-notification-source
- type: precise-prefix-cache-producer
  parameters:
    tokenProcessorConfig: {{blockSize: 16}}
    kvEventsConfig: {{zmqEndpoint: "tcp://127.0.0.1:{zmq_port}", discoverPods: false}}
- type: prefix-cache-scorer
  parameters:
    prefixMatchInfoProducerName: precise-prefix-cache-producer
- type: queue-scorer
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: endpoint-notification-source
    extractors:
    - pluginRef: precise-prefix-cache-producer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: max-score-picker
"""


async def test_the_split_precise_pipeline_routes_by_the_servers_tokens(
    tmp_path: Path,
    tokenizer_json: Path,  # noqa: F811
) -> None:
    zmq_port = free_port()
    ports = [listen_port() for _ in range(3)]
    sims = [
        SimServer(
            SimulatorArgs(
                host="127.0.0.1",
                port=port,
                served_model_names=(MODEL,),
                time_scale=0.05,
                seed=i,
                block_size=16,
                tokenizer=str(tokenizer_json),
                kv_events_endpoint=f"tcp://127.0.0.1:{zmq_port}",
                kv_events_topic=f"kv@127.0.0.1:{port}@{MODEL}",
            )
        )
        for i, port in enumerate(ports)
    ]
    docs = tmp_path / "pool.yaml"
    docs.write_text(yaml.safe_dump_all(static_pool_docs([f"127.0.0.1:{p}" for p in ports])))
    picker = parse_picker_config(SPLIT_PIPELINE.format(model=MODEL, render_port=ports[0], zmq_port=zmq_port))
    gw = Gateway(
        ManifestPoolSource(load_manifests([docs])),
        local_settings({"proxy.served_header": True, "seed": 3}),
        picker=picker,
    )
    for s in sims:
        await s.start()
    await gw.start()
    scorer = gw.scheduler.plugin("prefix-cache-scorer")
    assert isinstance(scorer, PrecisePrefixScorer)
    assert gw.core is not None
    producer = gw.core.tokens
    assert producer is not None
    hf = load_tokenizer(str(tokenizer_json))
    bos = hf.bos_id
    assert bos is not None
    try:

        def rendered(text: str) -> InferenceRequest:  # the ids the server's renderer gives
            ids = (bos, *hf.encode(text))
            return InferenceRequest(
                request_id="q",
                model=MODEL,
                target_model=MODEL,
                prompt=text,
                body={"prompt": text},
                prompt_token_ids=ids,
            )

        await tenants_return_home(gw, scorer, ports, tenants=4, questions=2, probe=rendered)
        assert producer.failures == 0
    finally:
        await gw.stop()
        for s in sims:
            await s.stop()
