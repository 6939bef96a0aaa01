#!/usr/bin/env bash
# Deploy the Ollama proxy to UbiOps: create or update everything in one idempotent command.
#   UBIOPS_API_TOKEN=... scripts/deploy.sh --project my-project --image ollama-ubiops.tar
#   scripts/deploy.sh --project my-project --dry-run   # the plan; calls nothing
#   scripts/deploy.sh --project my-project --delete    # remove what it created (asks first)
#   scripts/deploy.sh --help                           # every option, with defaults from the env
# Runs `python -m proxy.deploy` in the project's locked environment (.venv, made or brought up
# to date by scripts/bootstrap.sh first, with the `deploy` extra: the `ubiops` client).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/python" -m proxy.deploy "$@"
