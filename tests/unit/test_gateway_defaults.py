"""The gateway derives its default scheduler from the manifests it serves."""

from __future__ import annotations

from pathlib import Path

from infergate.api.loader import load_manifests
from infergate.app.sources import _base_models
from tests.conftest import SEED_DIR


def test_tutorial_base_model_keeps_lora_affinity_neutral() -> None:
    assert _base_models(load_manifests([SEED_DIR])) == ["meta-llama/Llama-3.1-8B-Instruct"]


def test_served_model_names_count_as_base_models(tmp_path: Path) -> None:
    text = (SEED_DIR / "vllm-llama3.1-8b-instruct.yaml").read_text()
    text = text.replace(
        "--tensor-parallel-size 1", "--served-model-name llama small-llama --tensor-parallel-size 1"
    )
    (tmp_path / "d.yaml").write_text(text)
    assert _base_models(load_manifests([tmp_path])) == [
        "meta-llama/Llama-3.1-8B-Instruct",
        "llama",
        "small-llama",
    ]
