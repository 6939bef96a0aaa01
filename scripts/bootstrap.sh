#!/usr/bin/env bash
# Make the project's locked environment (.venv) exist and match uv.lock.
# Installs uv with the interpreter's own pip when it is missing; needs only python3 >= 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if ! "$python" -m uv --version >/dev/null 2>&1; then
    echo "bootstrap: installing uv with pip" >&2
    "$python" -m pip install --quiet uv
fi
"$python" -m uv sync --locked --all-extras --quiet
