#!/usr/bin/env bash
# Deploy the Ollama proxy to UbiOps: create or update everything in one idempotent command.
#   UBIOPS_API_TOKEN=... scripts/deploy.sh --project my-project --image ollama-ubiops.tar
#   scripts/deploy.sh --help        # every option; --dry-run prints the plan and calls nothing
# Runs `python -m proxy.deploy` in the project's locked environment, with the `deploy` extra.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v uv >/dev/null 2>&1; then
    echo "deploy.sh: needs uv (https://docs.astral.sh/uv/); or run scripts/bootstrap.sh" >&2
    exit 1
fi
exec uv run --project "$root" --locked --extra deploy --quiet python -m proxy.deploy "$@"
