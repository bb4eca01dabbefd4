#!/usr/bin/env bash
# Create .venv (if needed) and install clipsearch with its test and UI dependencies.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned to the builds this project is tested with (they install from local
# wheels on our machines); then the package with its extras.
pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
pip install --quiet --disable-pip-version-check -e ".[ui,test,distributed,onnx]"
