#!/usr/bin/env bash
# Make (or refresh) a virtual environment with the project and its test extras.
# Usage: bash .ci/venv.sh [VENV_DIR]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The CPU build of torch first (a file on disk on our machines), so the project's
# range `torch>=2.11,<2.15` is met and no multi-GB CUDA build is fetched.
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e '.[test]'
