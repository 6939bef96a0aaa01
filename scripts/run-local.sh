#!/usr/bin/env bash
# The local stack: an emulated UbiOps instance (3 request processes -> proxy -> ollama serve)
# answering a streamed chat request and an embedding request. Uses the real Ollama and models
# when installed (cached by scripts/real-ollama.sh, or an `ollama` on PATH), otherwise the bundled
# simulator; every answer line says which produced it. Arguments and environment variables
# (OLLAMA_CHAT_MODELS, ...) go to `python -m proxy.demo`: see scripts/run-local.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
exec .venv/bin/python -m proxy.demo "$@"
