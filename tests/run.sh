#!/usr/bin/env bash
# Install everything from nothing (venv, requirements, Debian's chromium) and run the test suite.
# Extra arguments go to pytest, e.g.:  bash tests/run.sh tests/unit -q
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
exec venv/bin/python -m pytest tests --timeout=600 -p no:cacheprovider "$@"
