#!/usr/bin/env bash
# Set up .venv-vllm (scripts/setup_vllm.sh), then run the vLLM backend's tests there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm.sh
VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} .venv-vllm/bin/python -m pytest tests/vllm_backend "$@"
