#!/usr/bin/env bash
# Make the project's locked environment (.venv) exist and match uv.lock (every extra and the dev
# group), with uv. Needs either uv or a Python 3.11+ as `python3` (or $PYTHON). uv is, in order:
#   1. `uv` on PATH;
#   2. `python3 -m uv`, when that interpreter has it installed;
#   3. .bootstrap/venv/bin/uv, a private tools environment under the repository (gitignored),
#      created here on first use with `python3 -m venv` and pip, so it works with an "externally
#      managed" system Python (PEP 668) too.
# Everything goes to stderr; quiet when there is nothing to do.
#
# `scripts/bootstrap.sh uv ARGS...` runs that same uv with ARGS instead of syncing, so other scripts
# find uv exactly as this one does.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.bootstrap/venv
python="${PYTHON:-python3}"

say() { echo "bootstrap: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# The Python 3.11+ this script may use to get uv, or an explanation of why there is none.
check_python() {
    command -v "$python" >/dev/null 2>&1 ||
        die "no uv and no $python: install uv (https://docs.astral.sh/uv/) or Python 3.11+"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "needs Python 3.11+, but $python is $("$python" -V 2>&1); set PYTHON=/path/to/python3.11"
}

# Create $TOOLS with uv in it: with the venv module's own pip (ensurepip), or, where ensurepip is
# missing (Debian without python3-venv), an empty venv filled by the interpreter's pip.
install_tools() {
    local installing="installing uv into $TOOLS (no uv on PATH, nor as \`$python -m uv\`)"
    rm -rf "$TOOLS"
    if "$python" -m venv "$TOOLS" >/dev/null 2>&1; then
        say "$installing"
        "$TOOLS/bin/python" -m pip install --quiet uv >&2
    elif "$python" -m pip --version >/dev/null 2>&1 &&
        "$python" -m venv --without-pip "$TOOLS" >/dev/null 2>&1; then
        say "$installing, with $python's pip"
        "$python" -m pip --python "$TOOLS/bin/python" install --quiet uv >&2
    else
        rm -rf "$TOOLS"
        die "cannot install uv: $python has neither ensurepip nor pip; install uv" \
            "(https://docs.astral.sh/uv/) or python3-venv (Debian/Ubuntu: apt-get install python3-venv)"
    fi
}

if command -v uv >/dev/null 2>&1; then
    uv=(uv)
elif command -v "$python" >/dev/null 2>&1 && "$python" -m uv --version >/dev/null 2>&1; then
    uv=("$python" -m uv)
else
    if ! "$TOOLS/bin/uv" --version >/dev/null 2>&1; then
        check_python
        install_tools
    fi
    uv=("$TOOLS/bin/uv")
fi

if [[ "${1:-}" == uv ]]; then
    shift
    exec "${uv[@]}" "$@"
fi

# An explicit $PYTHON is also the interpreter of .venv; otherwise uv picks one (python3 on PATH).
"${uv[@]}" sync --locked --all-extras --quiet ${PYTHON:+--python "$PYTHON"}
