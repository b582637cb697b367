#!/usr/bin/env bash
# Set up everything, then run the main job on the packaged default models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/expertsteer demo "$@"
