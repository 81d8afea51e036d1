#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything lstmsearch needs.
#   bash scripts/setup.sh          # the tool itself
#   bash scripts/setup.sh --test   # plus what the tests need (pytest, Selenium, Chromium, Ray)
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
python=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)" >&2
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# PyTorch first: on a machine without an NVIDIA GPU take the CPU build (small, no CUDA).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        echo "setup: installing PyTorch (GPU found)" >&2
        "${pip[@]}" "torch>=2.2,<2.15"
    else
        echo "setup: installing the CPU build of PyTorch" >&2
        "${pip[@]}" "torch==2.13.0"
    fi
fi

if [ "$want_test" = 1 ]; then
    "${pip[@]}" -e ".[test,hdf5,ray]"
else
    "${pip[@]}" -e .
fi

if [ "$want_test" = 1 ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
    echo "setup: installing chromium and chromium-driver for the browser tests" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
