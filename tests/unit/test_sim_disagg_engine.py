"""The decode side of P/D in the engine, on a virtual clock (exact, no sleeping): the modelled KV pull
replaces the prefill compute, holds blocks while it runs, and covers only what the local prefix
cache lacks."""

from __future__ import annotations

from infergate.simulator.drivers import VirtualDriver, VirtualLoop
from infergate.simulator.engine import Engine, EngineConfig, EngineRequest, RequestOutput
from infergate.simulator.profile import get_profile


def _ttft(req: EngineRequest, *, blocks: int = 4000) -> tuple[float, list[tuple[int, int, float]]]:
    """TTFT of ``req`` alone on a fresh engine, and (running, waiting, kv usage) after each step."""
    engine = Engine(EngineConfig(num_gpu_blocks=blocks))
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop)
    outs: list[RequestOutput] = []
    states: list[tuple[int, int, float]] = []
    driver.add_step_listener(
        lambda: states.append(
            (engine.stats().num_running, engine.stats().num_waiting, engine.stats().kv_cache_usage)
        )
    )
    loop.call_at(0.0, lambda: driver.submit(req, outs.append))
    loop.run()
    first = next(o for o in outs if o.new_token_ids)
    assert first.first_token_time is not None
    return first.first_token_time - first.arrival_time, states


def test_decode_side_pays_the_transfer_instead_of_the_prefill() -> None:
    prompt = list(range(1000, 1000 + 4000))
    plain, _ = _ttft(EngineRequest("plain", prompt, 4, ignore_eos=True))
    remote = 4000 // 16 * 16
    pulled, states = _ttft(EngineRequest("pd", prompt, 4, ignore_eos=True, remote_prefill_tokens=remote))
    cfg = EngineConfig()
    transfer = cfg.kv_transfer_latency + (remote - 1) * get_profile(cfg.profile).kv_bytes_per_token / 25e9
    # remote = 4000 is capped at prompt - 1 = 3999: the last token is computed here
    assert transfer < pulled < transfer + 0.05
    assert pulled < plain / 2  # a 4000-token prefill costs far more than pulling its KV
    # while its KV arrives the request holds blocks and counts as waiting, not running
    running, waiting, usage = states[0]
    assert (running, waiting) == (0, 1) and usage > 0.05


def test_transfer_covers_only_what_the_local_prefix_cache_lacks() -> None:
    engine = Engine(EngineConfig())
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop)
    outs: list[RequestOutput] = []
    prompt = list(range(1000, 1000 + 1600))
    loop.call_at(0.0, lambda: driver.submit(EngineRequest("warm", prompt[:800], 1), outs.append))
    loop.call_at(
        5.0, lambda: driver.submit(EngineRequest("pd", prompt, 1, remote_prefill_tokens=1600), outs.append)
    )
    loop.run()
    stats = engine.stats()
    # the warm prompt's 50 blocks are local hits; only the remaining 799 tokens are pulled
    assert stats.prompt_tokens_external == 1599 - 800
    assert stats.prompt_tokens_cached == 1599 and stats.prefix_cache_hits == 800
