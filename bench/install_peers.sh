#!/usr/bin/env bash
# Create one virtualenv per peer router from PyPI, for `infergate bench --matrix`.
#
#   bash bench/install_peers.sh [DEST]        # DEST defaults to /tmp/peers
#
# Then:  INFERGATE_PEER_VENVS=DEST/sglang-router:DEST/vllm-router infergate bench --matrix ...
# (or pass --peer-venv DEST/sglang-router --peer-venv DEST/vllm-router).
# Each router gets its own venv because both packages install a command named `vllm-router`.
set -euo pipefail

DEST="${1:-/tmp/peers}"
PYTHON="${PYTHON:-python3.11}"
SGLANG_ROUTER_VERSION="${SGLANG_ROUTER_VERSION:-0.3.2}"
VLLM_ROUTER_VERSION="${VLLM_ROUTER_VERSION:-0.1.17}"

mkdir -p "$DEST"

make_venv() {  # name package==version
    local dir="$DEST/$1"
    if [ ! -x "$dir/bin/python" ]; then
        "$PYTHON" -m venv "$dir"
    fi
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$2"
    echo "installed $2 into $dir"
}

make_venv sglang-router "sglang-router==${SGLANG_ROUTER_VERSION}"
make_venv vllm-router "vllm-router==${VLLM_ROUTER_VERSION}"

echo "export INFERGATE_PEER_VENVS=$DEST/sglang-router:$DEST/vllm-router"
