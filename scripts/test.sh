#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh: a no-op when nothing changed) and runs the test suite. Arguments go to pytest.
# Tests marked shared_data need ../shared (or $MMAE_SHARED_DIR) and are skipped, with one reason, without it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
