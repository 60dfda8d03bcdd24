#!/usr/bin/env bash
# Create one virtualenv per benchmark client from PyPI, for the recipes in docs/bench.md and the
# tests that run them (tests/e2e/test_bench_clients.py).
#
#   bash bench/install_clients.sh [DEST]        # DEST defaults to /tmp/bench-clients
#
# inference-perf 0.7 needs Python >= 3.12 (PYTHON312, default python3.12) and installs ~790 MB
# (transformers, datasets, pyarrow, boto3, ...; no torch). guidellm 0.8.1 needs torch: the CPU
# wheel from PyTorch's own index keeps it to ~1.4 GB instead of the CUDA build's ~6 GB.
# Neither can share infergate's development venv (Python 3.11, and their pins differ).
set -euo pipefail

DEST="${1:-/tmp/bench-clients}"
PYTHON312="${PYTHON312:-python3.12}"
PYTHON="${PYTHON:-python3.11}"
INFERENCE_PERF_VERSION="${INFERENCE_PERF_VERSION:-0.7.0}"
GUIDELLM_VERSION="${GUIDELLM_VERSION:-0.8.1}"

mkdir -p "$DEST"

venv() {  # dir python
    if [ ! -x "$1/bin/python" ]; then
        "$2" -m venv "$1"
    fi
}

venv "$DEST/inference-perf" "$PYTHON312"
"$DEST/inference-perf/bin/python" -m pip install --quiet --disable-pip-version-check \
    "inference-perf==${INFERENCE_PERF_VERSION}"
echo "installed inference-perf ${INFERENCE_PERF_VERSION} into $DEST/inference-perf"

venv "$DEST/guidellm" "$PYTHON"
"$DEST/guidellm/bin/python" -m pip install --quiet --disable-pip-version-check \
    torch --index-url https://download.pytorch.org/whl/cpu
"$DEST/guidellm/bin/python" -m pip install --quiet --disable-pip-version-check \
    "guidellm==${GUIDELLM_VERSION}"
echo "installed guidellm ${GUIDELLM_VERSION} (CPU torch) into $DEST/guidellm"

echo "export INFERGATE_INFERENCE_PERF=$DEST/inference-perf/bin/inference-perf"
echo "export INFERGATE_GUIDELLM=$DEST/guidellm/bin/guidellm"
