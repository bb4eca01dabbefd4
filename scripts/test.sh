#!/usr/bin/env bash
# Quick start 2: set up and run the whole test suite (browser tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The browser test drives Debian's chromium through Playwright (never `playwright install`).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "note: chromium is not installed and this user cannot apt-get it; the browser test will be skipped" >&2
    fi
fi
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
