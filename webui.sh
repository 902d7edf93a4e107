#!/usr/bin/env bash
# Install (first run) and start Atelier.  Usage: ./webui.sh [flags]   (see: ./webui.sh --help)
# Environment, as in A1111:
#   COMMANDLINE_ARGS  extra flags, read before the ones given here
#   TORCH_COMMAND     how torch is installed (default: pip install torch==2.14.1 torchvision==0.29.1)
#   PYTHON            the Python 3.11+ to create the venv with (default: python3)
#   VENV_DIR          where the virtual environment lives (default: ./venv)
#   XFORMERS_PACKAGE  the xformers to install when --xformers is given on a CUDA machine
#                     (default: xformers==0.0.35, built for torch >= 2.10)
#   RAY_PACKAGE       the Ray to install for --ray-address or `./webui.sh worker ...` (default: ray==2.60.0;
#                     every machine of a cluster needs the same version)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-venv}"
TORCH_COMMAND="${TORCH_COMMAND:-pip install torch==2.14.1 torchvision==0.29.1}"

all_args=" ${COMMANDLINE_ARGS:-} $* "

if [ ! -x "$VENV_DIR/bin/python" ]; then
    echo "Creating virtual environment in $VENV_DIR"
    "$PYTHON" -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
source "$VENV_DIR/bin/activate"

stamp="$VENV_DIR/.atelier-installed"
wanted="$(cat requirements.txt; echo "$TORCH_COMMAND")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    python -m pip install --quiet --upgrade pip
    if ! python -c "import torch" 2>/dev/null; then
        echo "Installing torch: $TORCH_COMMAND"
        # shellcheck disable=SC2086
        python -m $TORCH_COMMAND
    fi
    echo "Installing requirements"
    python -m pip install --quiet -r requirements.txt
    printf '%s' "$wanted" > "$stamp"
fi

# xformers is an optional attention backend: installed only when asked for, and only where CUDA is.
case "$all_args" in
    *" --xformers "*)
        if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
            python -c "import xformers" 2>/dev/null || python -m pip install --quiet "${XFORMERS_PACKAGE:-xformers==0.0.35}"
        else
            echo "--xformers: no CUDA GPU here; xformers is not installed (Atelier will say so at startup)."
        fi ;;
esac

# Ray is optional too: only scale-out (--ray-address, or `./webui.sh worker --join HOST:PORT` on a
# GPU host) needs it, and every machine of a cluster must run the same version.
case "$all_args" in
    *" --ray-address"*|*" worker "*)
        python -c "import ray" 2>/dev/null || python -m pip install --quiet "${RAY_PACKAGE:-ray==2.60.0}" ;;
esac

case "$all_args" in
    *" --exit "*) echo "Installed; --exit given, not starting."; exit 0 ;;
esac

exec python app.py "$@"
