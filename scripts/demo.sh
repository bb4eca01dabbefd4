#!/usr/bin/env bash
# Quick start 1: set up, generate a sample photo collection, index it with the bundled
# model and serve the web UI on http://127.0.0.1:7860 (Ctrl-C to stop).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec clipsearch demo "$@"
