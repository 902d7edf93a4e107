#!/usr/bin/env bash
# Install everything from nothing (venv, requirements, Debian's chromium) and run the test suite.
# Extra arguments go to pytest, e.g.:  bash tests/run.sh tests/unit -q
# Without a path among them the whole suite runs in two halves at once, one per core: the browser
# and reliability tests (servers, Chromium, timing) in the foreground, the rest beside them; the
# second half's report follows the first's, and either half failing fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

./webui.sh --exit
venv/bin/python -m pip install --quiet -r tests/requirements.txt

if [ ! -x /usr/bin/chromium ]; then
    echo "Installing Debian's chromium for the browser tests"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi

export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
PYTEST=(venv/bin/python -m pytest --timeout=600 -p no:cacheprovider)
for arg in "$@"; do
    if [[ "$arg" != -* ]]; then  # a path or a selection: one run of what was asked
        exec "${PYTEST[@]}" tests "$@"
    fi
done

beside_log=$(mktemp)
trap 'rm -f "$beside_log"' EXIT
"${PYTEST[@]}" tests/unit tests/api tests/integration tests/gpu "$@" > "$beside_log" 2>&1 &
beside=$!
status=0
echo "=== tests/ui, tests/reliability ==="
"${PYTEST[@]}" tests/ui tests/reliability "$@" || status=$?
wait "$beside" || status=$?
echo "=== tests/unit, tests/api, tests/integration, tests/gpu ==="
cat "$beside_log"
exit "$status"
