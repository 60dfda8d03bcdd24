"""Workloads drawn at random, to judge the routing on workloads nobody wrote with it in mind.

The corpus and the held-out workloads were each written by someone who knew what the router does;
a default can fit them and still lose to round-robin on a workload of a kind nobody thought of.
This script draws ``--count`` workload files from a seeded distribution over what a workload file
can say: the request shape (independent requests, multi-tenant sessions with shared system prompts,
bursts with or without samples of one prompt, classes of different lengths), prompt and answer
lengths over two orders of magnitude, the pool (2-12 replicas, H100s or a mix with A100s), LoRA
adapters and their GPU slots, arrival burstiness, streaming share, ``max_tokens`` habits,
priorities, and now and then a replica that slows down or a pool that grows or shrinks. Run them
with ``bench_regret.py --workloads``; the same ``--seed`` draws the same files.

    .venv/bin/python bench/corpus_random.py --count 16 --seed 1 --out /tmp/random-corpus
    .venv/bin/python bench/bench_regret.py --quick --duration 15 --jobs 2 --no-plots \\
        --workloads "$(ls /tmp/random-corpus/*.yaml | paste -sd,)" \\
        --strategies default,round-robin,least-in-flight --out /tmp/random-regret

Lengths are kept where a 15 s window can judge them (answers of at most ~1,500 tokens on average,
burst periods of at most 10 s); workloads that no strategy can serve within the SLO at any rate
come out as zeros for every strategy, which says nothing about routing and is listed as such.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from typing import Any

import yaml

from infergate.bench.workloads import WorkloadSpec

BASE = "meta-llama/Llama-3.1-8B-Instruct"
PROFILES = ("llama3.1-8b-h100", "llama3.1-8b-a100")


def log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def length(rng: random.Random, low: float, high: float) -> dict[str, Any]:
    """A lognormal length with a mean drawn log-uniformly in [low, high]; now and then fixed."""
    mean = round(log_uniform(rng, low, high))
    if rng.random() < 0.15:
        return {"kind": "fixed", "mean": mean}
    sigma = round(rng.uniform(0.2, 1.0), 2)
    return {"kind": "lognormal", "mean": mean, "sigma": sigma, "min": 1, "max": min(16000, mean * 8)}


def models(rng: random.Random, adapters: list[str]) -> list[dict[str, Any]]:
    """The base model alone, or the base and adapters with Zipf-like or even popularity."""
    if not adapters:
        return [{"name": BASE}]
    names = ([BASE] if rng.random() < 0.5 else []) + adapters
    skew = rng.choice((0.0, 0.7, 1.0, 1.5))
    return [{"name": n, "weight": round(1.0 / (i + 1) ** skew, 4)} for i, n in enumerate(names)]


def body(rng: random.Random, adapters: list[str]) -> dict[str, Any]:
    kind = rng.choice(("mix", "mix", "shared_prefix", "shared_prefix", "burst", "classes"))
    api = rng.choice(("completions", "chat"))
    if kind == "mix":
        return {
            "type": "mix",
            "requests": 3000,
            "api": api,
            "prompt": length(rng, 30, 4000),
            "answer": length(rng, 4, 1500),
            "models": models(rng, adapters),
        }
    if kind == "shared_prefix":
        return {
            "type": "shared_prefix",
            "tenants": rng.choice((1, 3, 8, 20, 50, 120)),
            "system_prompt_tokens": round(log_uniform(rng, 100, 6000)),
            "question": length(rng, 20, 800),
            "answer": length(rng, 8, 1000),
            "turns": rng.randint(1, 8),
            "sessions": rng.choice((20, 60, 200, 400)),
            "models": models(rng, adapters),
            "staggered": rng.random() < 0.5,
            "turn_after_answer": rng.random() < 0.3,
        }
    if kind == "burst":
        return {
            "type": "burst",
            "bursts": 1000,
            "burst_size": rng.choice((8, 16, 32, 64, 128)),
            "period_s": round(rng.uniform(1.0, 10.0), 1),
            "prompt": length(rng, 30, 3000),
            "answer": length(rng, 4, 1200),
            "models": models(rng, adapters),
            "samples": rng.choice((1, 1, 1, 4, 8)),
        }
    classes = []
    for i in range(rng.randint(2, 3)):
        cls: dict[str, Any] = {
            "name": f"class-{i}",
            "weight": round(rng.uniform(0.5, 5.0), 2),
            "prompt": length(rng, 30, 6000),
            "answer": length(rng, 2, 1500),
        }
        if adapters and rng.random() < 0.5:
            cls["models"] = [{"name": rng.choice(adapters)}]
        classes.append(cls)
    return {"type": "classes", "requests": 3000, "api": api, "classes": classes}


def draw(rng: random.Random, name: str) -> dict[str, Any]:
    """One workload file's content."""
    replicas = rng.choice((2, 3, 4, 4, 6, 8, 12))
    pool: dict[str, Any] = {"replicas": replicas}
    adapters: list[str] = []
    if rng.random() < 0.3:
        adapters = [f"lora-{i}" for i in range(rng.choice((1, 2, 3, 4, 8, 16)))]
        pool["max_loras"] = rng.choice((1, 2, 4))
    pool["adapters"] = adapters
    work = body(rng, adapters)
    if work["type"] != "burst":
        pool["arrival"] = rng.choice(("poisson", "poisson", "gamma:0.5", "gamma:0.2"))
    if rng.random() < 0.25:
        pool["profiles"] = list(PROFILES) if rng.random() < 0.5 else [PROFILES[0], PROFILES[0], PROFILES[1]]
    events = rng.random()
    if events < 0.1:
        pool["slow"] = [
            {"at": 0.3, "replica": rng.randrange(replicas), "factor": rng.choice((1.5, 2.0, 3.0))}
        ]
    elif events < 0.2 and replicas > 2:
        pool["scale"] = [{"at": 0.3, "replicas": rng.choice((-1, 1, replicas // 2))}]
    spec: dict[str, Any] = {
        "name": name,
        "description": "drawn by bench/corpus_random.py",
        "seed": rng.randrange(1 << 16),
        "workload": work,
        "pool": pool,
    }
    if rng.random() < 0.25:
        spec["objectives"] = [
            {"name": "high", "priority": 10, "weight": round(rng.uniform(0.5, 3), 2)},
            {"name": "standard", "priority": 0, "weight": round(rng.uniform(1, 5), 2)},
            {"name": "sheddable", "priority": -10, "weight": round(rng.uniform(0.5, 3), 2)},
        ][: rng.choice((2, 3))]
    streamed = rng.random()
    if streamed < 0.25:
        spec["streamed"] = round(rng.uniform(0.0, 0.9), 2)
    habit = rng.random()
    if habit < 0.2:
        spec["max_tokens"] = 4096
    elif habit < 0.3:
        spec["max_tokens"] = "none"
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        rng = random.Random(f"{args.seed}/{i}")
        name = f"random-{args.seed}-{i:02d}"
        spec = draw(rng, name)
        WorkloadSpec.model_validate(spec)  # a draw the schema refuses is this script's bug
        path = args.out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
