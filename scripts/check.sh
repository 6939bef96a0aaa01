#!/usr/bin/env bash
# The whole test suite: lint, format, types, shell and Dockerfile checks, then pytest.
# Extra arguments go to pytest (e.g. scripts/check.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff" && ruff check . && ruff format --check .
echo "== mypy" && mypy
echo "== shellcheck" && shellcheck scripts/*.sh .ci/run
echo "== hadolint" && hadolint Dockerfile
echo "== pytest" && pytest "$@"
