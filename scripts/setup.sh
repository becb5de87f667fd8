#!/usr/bin/env bash
# Creates .venv and installs mmae-hf with its pinned stack. Idempotent.
# torch is installed first, pinned to the CPU build that pip finds locally on CPU machines;
# on a GPU machine set MMAE_TORCH_SPEC (e.g. "torch==2.13.0") to whatever your CUDA needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install -q "${MMAE_TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -e ".[dev]"
echo "mmae-hf installed in $(pwd)/.venv"
