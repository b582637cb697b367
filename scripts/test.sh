#!/usr/bin/env bash
# Set up everything, then lint and run the whole test suite (real packaged models included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
