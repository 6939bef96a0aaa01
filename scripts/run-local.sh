#!/usr/bin/env bash
# The local stack: an emulated UbiOps instance (3 request processes -> proxy -> ollama serve)
# answering a streamed chat request and an embedding request. Uses the real `ollama` when it is
# on PATH, otherwise the bundled simulator. Environment variables (OLLAMA_CHAT_MODELS, ...) apply.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
exec .venv/bin/python -m proxy.demo "$@"
