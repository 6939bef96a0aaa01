#!/usr/bin/env bash
# The whole test suite: lint, format, types, shell and Dockerfile checks, pytest, then the image
# build and its smoke test (scripts/image-check.sh: podman, as root).
# Extra arguments go to pytest (e.g. scripts/check.sh -m "not slow"); such a partial run skips
# the image step.
# In CI (CI set to anything but empty, 0 or false) a real Ollama is made first
# (scripts/real-ollama.sh: built from source on a fresh machine, then cached), and CI fails
# if it cannot be; nginx, the benchmarks' floor anchor, is installed with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
# For the scripts that want the machine's python3, not .venv's: real-ollama.sh needs its pip, and
# both find uv through scripts/bootstrap.sh, which should find it as it just did.
machine_path="$PATH"
export PATH="$PWD/.venv/bin:$PATH"

case "${CI:-}" in
"" | 0 | false | False | FALSE) ci=0 ;;
*) ci=1 ;;
esac

echo "== ruff" && ruff check . && ruff format --check .
echo "== mypy" && mypy
echo "== shellcheck" && shellcheck scripts/*.sh .ci/run
echo "== hadolint" && hadolint Dockerfile
if ((ci)); then
    echo "== real ollama" && PATH="$machine_path" scripts/real-ollama.sh >/dev/null
    if ! command -v nginx >/dev/null; then
        echo "== nginx"
        apt-get install -y -qq nginx >/dev/null 2>&1 ||
            { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }
    fi
fi
echo "== pytest" && pytest "$@"
if (($# == 0)); then
    echo "== image" && PATH="$machine_path" scripts/image-check.sh
else
    echo "== image: skipped (pytest was given arguments: a partial run)"
fi
