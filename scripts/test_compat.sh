#!/usr/bin/env bash
# The oldest transformers line we support (4.57.x, the last 4.x) in its own venv: the tiny-model
# tests of loading, layer discovery, extraction and steering (fast; no packaged models needed).
#   bash scripts/test_compat.sh [transformers version]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-4.57.6}
venv=.venv-tf${version%%.*}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q torch==2.13.0
pip install -q -e ".[dev]" "transformers==$version"
pip install -q --no-deps repeng==0.4.0  # as in setup.sh: the GGUF export checks
"$venv/bin/python" -c "import transformers as t; assert t.__version__ == '$version', t.__version__"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not real" \
  tests/test_models.py tests/test_layers.py tests/test_extract.py tests/steer tests/test_plan.py \
  tests/test_export.py
