#!/usr/bin/env bash
# Creates .venv and installs mmae-hf with its pinned stack. Idempotent, and quick when nothing changed: the
# install is skipped while .venv/.mmae-setup-stamp matches a hash of pyproject.toml, this script, the Python
# version and MMAE_TORCH_SPEC, and the editable install still points at this clone (MMAE_FORCE_SETUP=1 reinstalls).
# torch is installed first, pinned to the CPU build that pip finds locally on CPU machines;
# on a GPU machine set MMAE_TORCH_SPEC (e.g. "torch==2.13.0") to whatever your CUDA needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${MMAE_TORCH_SPEC:-torch==2.13.0}
STAMP=.venv/.mmae-setup-stamp
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
. .venv/bin/activate
WANT=$( { cat pyproject.toml scripts/setup.sh; python -VV; echo "$TORCH_SPEC"; } | sha256sum | cut -d' ' -f1)
HAVE=$(cat "$STAMP" 2>/dev/null || true)
INSTALLED_AT=$(python -c "import importlib.util as u; s = u.find_spec('mmae_hf'); print(s.origin if s else '')" 2>/dev/null || true)
if [ "${MMAE_FORCE_SETUP:-0}" != 1 ] && [ "$WANT" = "$HAVE" ] && [ "$INSTALLED_AT" = "$(pwd)/mmae_hf/__init__.py" ]; then
    echo "mmae-hf already installed in $(pwd)/.venv (setup unchanged; MMAE_FORCE_SETUP=1 reinstalls)"
    exit 0
fi
rm -f "$STAMP"
LOG=.venv/setup.log  # pip's own chatter goes here; shown only when the install fails
echo "installing mmae-hf and its pinned stack into $(pwd)/.venv (a minute or two; log: $LOG)"
if ! { python -m pip install --upgrade pip \
       && { python -c "import torch" 2>/dev/null || python -m pip install "$TORCH_SPEC"; } \
       && python -m pip install -e ".[dev]"; } > "$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "setup: pip failed (full log: $LOG)" >&2
    exit 1
fi
echo "$WANT" > "$STAMP"
echo "mmae-hf installed in $(pwd)/.venv"
