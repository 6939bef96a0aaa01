#!/usr/bin/env bash
# Build the environment image (Dockerfile) with podman and smoke-test it, as CI does.
#
#   scripts/image-check.sh                 build from a clean state and run every check
#   scripts/image-check.sh --reuse-layers  reuse podman's layer cache for the first build (faster
#                                          local iterations; CI builds from nothing)
#   scripts/image-check.sh --simulator     put the Ollama simulator in the image even when a real
#                                          Ollama is cached by scripts/real-ollama.sh
#   scripts/image-check.sh --keep          keep the saved image archives, the test image and the
#                                          build's intermediate images
#
# At the end it removes the dangling images (untagged, unused) from podman's storage: earlier
# runs' images and this run's intermediate ones (not with --reuse-layers, which needs them).
#
# What it proves:
#   * the Dockerfile builds from nothing on a local Debian base image, every FROM overridden, with
#     the Ollama archive served from loopback (OLLAMA_URL + OLLAMA_SHA256) and this machine's CA
#     bundle as the `ca_bundle` build secret (HTTPS here goes through a re-signing proxy);
#   * an image with baked models (BAKE_CHAT_MODELS/BAKE_EMBEDDING_MODELS, and BAKE_MODELS_URL
#     for a real Ollama, which cannot reach its registry here) starts without pulling anything;
#   * a container of it runs as the non-root user `deployment`, its HEALTHCHECK
#     (`python3 -m proxy check`) turns healthy, the proxy answers chat (plain and streamed) and
#     embeddings through a published loopback port with the key and 401 without, and
#     `podman stop` ends it with exit status 0 within the grace period, Ollama stopped first and
#     no process left behind;
#   * deployment_package/ runs in the image under UbiOps' own harness
#     (`ubiops.utils.run_local`, installed in a test-only layer) and streams a chat answer
#     through `streaming_update`;
#   * a container of the image without baked models turns healthy too, its models pulled at
#     start (simulator) or mounted as a volume (a real Ollama cannot pull here);
#   * `podman save --format docker-archive` writes the archive `deploy.sh --build` uploads: its
#     size, its image id (as `deploy.sh` reads it), HEALTHCHECK and user in its config, and no
#     certificate of the build-only CA bundle in any layer.
#
# Ollama in the image: the real one built by scripts/real-ollama.sh when it is cached (with its
# two models, baked from a models archive), otherwise the simulator, packaged as bin/ollama of
# a release-shaped archive. The output says which.
#
# Runs as root (CI does): it installs podman, runc, debootstrap and zstd with apt when they are
# missing, makes the base image with debootstrap and uses rootful podman. Cached outside the
# repository, in ${XDG_CACHE_HOME:-~/.cache}/ubiops-ollama-proxy/image-check/: the generated
# containers.conf and the base image (a tarball keyed by its recipe, also kept in podman's
# storage). DEBIAN_MIRROR overrides the mirror read from /etc/apt; IMAGE_CA_BUNDLE the CA bundle
# (default: $SSL_CERT_FILE, else the system bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

# The base image: bump BASE_RECIPE to rebuild it; the key also covers the packages and mirror.
BASE_RECIPE=1
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-pip,python3-venv,python-is-python3,ca-certificates
IMAGE=localhost/ollama-ubiops:check
BAKED=localhost/ollama-ubiops:check-baked
RUN_LOCAL_IMAGE=localhost/ollama-ubiops:check-run-local
CHAT_MODEL=smollm2:135m
EMBEDDING_MODEL=all-minilm:l6-v2
STOP_TIMEOUT=20 # podman stop's grace; the proxy's SHUTDOWN_GRACE (10 s) must fit in it
HEALTHY_TIMEOUT=180

reuse_layers=0
force_simulator=0
keep=0
for arg in "$@"; do
    case "$arg" in
    --reuse-layers) reuse_layers=1 ;;
    --simulator) force_simulator=1 ;;
    --keep) keep=1 ;;
    -h | --help)
        sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "image-check: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

started=$SECONDS
phase_started=$SECONDS
timings=()
say() { echo "image-check: $*"; }
die() {
    echo "image-check: FAILED: $*" >&2
    exit 1
}
phase() {
    phase_started=$SECONDS
    echo
    say "== $*"
}
phase_done() {
    local took=$((SECONDS - phase_started))
    timings+=("$(printf '%4d s  %s' "$took" "$1")")
    say "   ($1: ${took} s)"
}
ok() { say "   ok: $*"; }

cache="${XDG_CACHE_HOME:-$HOME/.cache}/ubiops-ollama-proxy/image-check"
mkdir -p "$cache"
# One run at a time: the image tags and the base image are shared.
exec 9>"$cache/.lock"
if ! flock -n 9; then
    say "another image-check.sh run holds $cache/.lock: waiting for it"
    flock 9
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/image-check.XXXXXX")"
name="ubiops-ollama-proxy-check-$$"
server_pid=""

# podman without its complaints about the systemd timers of health checks: there is no systemd
# here, so the HEALTHCHECK is run with `podman healthcheck run`.
pm() {
    podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2)
}

cleanup() {
    local status=$?
    set +e
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    if command -v podman >/dev/null; then
        for c in "$name-serve" "$name-pull" "$name-probe"; do
            podman container exists "$c" 2>/dev/null && pm rm -f -t 0 "$c" >/dev/null
        done
        if ((!keep)) && podman image exists "$RUN_LOCAL_IMAGE" 2>/dev/null; then
            pm rmi -f "$RUN_LOCAL_IMAGE" >/dev/null
        fi
        # Earlier runs' images, replaced by this run's tags, and the build stages' intermediate
        # images: every dangling image (untagged, unused) goes, one generation per prune. Kept
        # with --reuse-layers (they are its cache) and --keep.
        if ((!keep && !reuse_layers)); then
            for _ in $(seq 60); do
                [[ -n "$(podman image prune -f 2>/dev/null)" ]] || break
            done
        fi
    fi
    if ((keep)); then
        say "kept: $work (saved archives), images $IMAGE $BAKED $RUN_LOCAL_IMAGE"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------------
phase "tools"
((EUID == 0)) || die "needs root (apt-get, debootstrap and rootful podman): sudo $0 $*"
missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap zstd:zstd; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    say "installing with apt: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q "${missing[@]}" >"$work/apt.log" 2>&1; then
        apt-get update -q >>"$work/apt.log" 2>&1
        apt-get install -y -q "${missing[@]}" >>"$work/apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed: $(tail -n 5 "$work/apt.log")"
    fi
fi
scripts/bootstrap.sh
python="$root/.venv/bin/python"
say "$(podman --version), $(runc --version | head -n 1)"

# crun cannot start containers on these machines (hybrid cgroups); runc can, given limits it
# may set: podman (and buildah) would ask for nofile/nproc up to 1048576, above the hard limits
# here, which only CAP_SYS_RESOURCE may raise. Podman caps its own nproc at pid_max.
limit() { # soft hard
    local soft="$1" hard="$2"
    [[ "$hard" == unlimited ]] && hard=1048576
    [[ "$soft" == unlimited ]] && soft="$hard"
    ((soft <= hard)) || soft="$hard"
    echo "$soft:$hard"
}
nproc_hard="$(ulimit -Hu)"
pid_max="$(cat /proc/sys/kernel/pid_max)"
if [[ "$nproc_hard" == unlimited ]] || ((nproc_hard > pid_max)); then
    nproc_hard="$pid_max"
fi
export CONTAINERS_CONF="$cache/containers.conf"
cat >"$CONTAINERS_CONF" <<EOF
# Generated by scripts/image-check.sh from this machine's limits; do not edit.
[containers]
default_ulimits = ["nofile=$(limit "$(ulimit -Sn)" "$(ulimit -Hn)")", "nproc=$(limit "$(ulimit -Su)" "$nproc_hard")"]

[engine]
runtime = "runc"
EOF
say "containers.conf: $CONTAINERS_CONF ($(grep default_ulimits "$CONTAINERS_CONF"))"
phase_done tools

# --- the base image ----------------------------------------------------------------------------
phase "base image (debootstrap $BASE_SUITE)"
debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    "$python" - "$BASE_SUITE" <<'PY'
import glob
import re
import sys

suite = sys.argv[1]
candidates = []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path).read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            for uri in fields.get("uris", "").split():
                candidates.append((suite in fields.get("suites", "").split(), uri))
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        found = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
        if found:
            candidates.append((found.group(2) == suite, found.group(1)))
for wanted in (True, False):
    for exact, uri in candidates:
        if exact == wanted and re.search(r"/debian/?$", uri):
            print(uri.rstrip("/"))
            sys.exit(0)
sys.exit(1)
PY
}
mirror="$(debian_mirror)" || die "no Debian mirror in /etc/apt: set DEBIAN_MIRROR"
base_key="$(printf '%s\n' "$BASE_RECIPE" "$BASE_SUITE" "$BASE_PACKAGES" "$mirror" | sha256sum | cut -c1-12)"
BASE="localhost/ubiops-ollama-proxy-base:$BASE_SUITE-$base_key"
base_tar="$cache/base-$BASE_SUITE-$base_key.tar.zst"
if podman image exists "$BASE"; then
    say "cached: $BASE"
elif [[ -s "$base_tar" ]]; then
    say "importing $base_tar"
    zstd -dc "$base_tar" | podman import --quiet - "$BASE" >/dev/null
else
    say "making $BASE from $mirror with $BASE_PACKAGES (about a minute)"
    rootfs="$cache/rootfs.tmp"
    rm -rf "$rootfs"
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" \
        "$BASE_SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
        tail -n 20 "$work/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    fi
    find "$rootfs/var/cache/apt" "$rootfs/var/lib/apt/lists" -type f -delete
    tar -C "$rootfs" --numeric-owner -c . | zstd -q -T0 -o "$base_tar.tmp" -f
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$rootfs"
    zstd -dc "$base_tar" | podman import --quiet - "$BASE" >/dev/null
    find "$cache" -maxdepth 1 -name "base-*.tar.zst" ! -name "${base_tar##*/}" -delete
fi
phase_done "base image"

# --- what goes into the image: Ollama (real or simulated), served from loopback ----------------
phase "Ollama archive"
serve="$work/serve"
mkdir -p "$serve/release/bin" "$serve/release/lib/ollama"
real_bin=""
real_models=""
if ((!force_simulator)) && found="$(scripts/real-ollama.sh --check 2>/dev/null)"; then
    real_bin="$(sed -n 's/^OLLAMA_BIN=//p' <<<"$found")"
    real_models="$(sed -n 's/^OLLAMA_MODELS=//p' <<<"$found")"
fi
tar_flags=(--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner)
if [[ -n "$real_bin" ]]; then
    kind=real
    ollama_version="$(OLLAMA_HOST=127.0.0.1:9 "$real_bin" --version 2>&1 | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | tail -n 1)"
    install -m 0755 "$real_bin" "$serve/release/bin/ollama"
    tar -C "$real_models" "${tar_flags[@]}" -cf "$serve/models.tar" .
    models_sha="$(sha256sum "$serve/models.tar" | cut -d' ' -f1)"
    say "Ollama in the image: the real Ollama $ollama_version ($real_bin), models baked from" \
        "$real_models ($(du -sh "$serve/models.tar" | cut -f1))"
else
    kind=simulator
    ollama_version="$("$root/.venv/bin/ollama-sim" --version | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+')"
    cat >"$serve/release/bin/ollama" <<'EOF'
#!/bin/sh
# Not Ollama: the Ollama simulator of ubiops-ollama-proxy (its `ollama-sim`, installed in the
# image with the project), in a release-shaped archive made by scripts/image-check.sh for CI.
exec ollama-sim "$@"
EOF
    chmod 0755 "$serve/release/bin/ollama"
    if [[ -n "$real_bin" ]] || ((force_simulator)); then
        say "Ollama in the image: the simulator (--simulator)"
    else
        say "Ollama in the image: the simulator (no real Ollama cached: scripts/real-ollama.sh makes one)"
    fi
fi
tar -C "$serve/release" "${tar_flags[@]}" -c . | zstd -q -o "$serve/ollama-linux-amd64.tar.zst" -f
ollama_sha="$(sha256sum "$serve/ollama-linux-amd64.tar.zst" | cut -d' ' -f1)"
free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port="$(free_port)"
"$python" -m http.server --bind 127.0.0.1 --directory "$serve" "$port" >"$work/http.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/ollama-linux-amd64.tar.zst" 2>/dev/null && break
    sleep 0.1
done
say "serving $(du -h "$serve/ollama-linux-amd64.tar.zst" | cut -f1) ollama-linux-amd64.tar.zst" \
    "(bin/ollama, lib/ollama/; sha256 $ollama_sha) at http://127.0.0.1:$port/"
phase_done "Ollama archive"

# --- the builds --------------------------------------------------------------------------------
ca_bundle="${IMAGE_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
build_args=(
    --format docker --network host
    --build-arg "BASE_IMAGE=$BASE" --build-arg "BUILD_IMAGE=$BASE"
    --build-arg "OLLAMA_VERSION=$ollama_version"
    --build-arg "OLLAMA_URL=http://127.0.0.1:$port/ollama-linux-amd64.tar.zst"
    --build-arg "OLLAMA_SHA256=$ollama_sha"
)
if [[ -s "$ca_bundle" ]]; then
    build_args+=(--secret "id=ca_bundle,src=$ca_bundle")
else
    ca_bundle=""
fi
build() { # log-name, podman build arguments...
    local log="$work/$1.log"
    shift
    if ! podman build "${build_args[@]}" "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "podman build failed (the end of its log above)"
    fi
}

phase "build $IMAGE (no models)"
say "CA bundle for the build: ${ca_bundle:-none} (build secret ca_bundle)"
no_cache=(--no-cache)
((reuse_layers)) && no_cache=()
build image "${no_cache[@]}" --tag "$IMAGE" .
if ((reuse_layers)); then
    ok "built (podman's layer cache reused: --reuse-layers)"
else
    ok "built from a clean state (--no-cache)"
fi
phase_done "build (no models)"

phase "build $BAKED (models baked)"
bake=(--build-arg "BAKE_CHAT_MODELS=$CHAT_MODEL" --build-arg "BAKE_EMBEDDING_MODELS=$EMBEDDING_MODEL")
if [[ "$kind" == real ]]; then
    bake+=(--build-arg "BAKE_MODELS_URL=http://127.0.0.1:$port/models.tar"
        --build-arg "BAKE_MODELS_SHA256=$models_sha")
fi
# Always --no-cache: podman's cache matches layers by content, so even the first build's fresh
# layers lead straight to an earlier run's bake step, which would be reused without running.
build baked --no-cache "${bake[@]}" --tag "$BAKED" .
grep -q '"model present"' "$work/baked.log" ||
    grep -q '"model pulled"' "$work/baked.log" || die "the bake step logged no model"
if [[ "$kind" == real ]]; then
    ! grep -q '"pulling model"' "$work/baked.log" || die "the bake step pulled from the registry"
    ok "models unpacked from BAKE_MODELS_URL and found by \`python3 -m proxy pull\` (nothing pulled)"
else
    ok "models pulled at build time by \`python3 -m proxy pull\` (from the simulator's registry)"
fi
phase_done "build (models baked)"

phase "build $RUN_LOCAL_IMAGE (test-only layer: the ubiops client)"
mkdir -p "$work/run-local"
scripts/bootstrap.sh uv export --project "$root" --frozen --no-dev --extra deploy \
    --no-emit-project --no-header --quiet --format requirements-txt \
    --output-file "$work/run-local/requirements.txt" >/dev/null
cat >"$work/run-local/Containerfile" <<'EOF'
ARG IMAGE
FROM ${IMAGE}
COPY requirements.txt /tmp/deploy-requirements.txt
RUN --mount=type=secret,id=ca_bundle,mode=0444 \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python3 -m pip install --no-cache-dir --require-hashes -r /tmp/deploy-requirements.txt
EOF
build run-local --build-arg "IMAGE=$BAKED" --tag "$RUN_LOCAL_IMAGE" -f "$work/run-local/Containerfile" \
    "$work/run-local"
phase_done "build (test layer)"

# --- the container -----------------------------------------------------------------------------
# Given to the containers through the environment (-e NAME): never on a command line.
api_key="image-check-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
http_port="$(free_port)"
model_env=(-e "OLLAMA_CHAT_MODELS=$CHAT_MODEL" -e "OLLAMA_EMBEDDING_MODELS=$EMBEDDING_MODEL")

wait_healthy() { # container
    local deadline=$((SECONDS + HEALTHY_TIMEOUT)) t0=$SECONDS
    until pm healthcheck run "$1" >/dev/null 2>&1; do
        if [[ "$(podman inspect --format '{{.State.Status}}' "$1")" != running ]]; then
            podman logs "$1" 2>&1 | tail -n 30 >&2
            die "container $1 exited before it was healthy"
        fi
        if ((SECONDS > deadline)); then
            podman logs "$1" 2>&1 | tail -n 30 >&2
            die "container $1 not healthy within $HEALTHY_TIMEOUT s"
        fi
        sleep 0.5
    done
    local status
    status="$(podman inspect --format '{{.State.Health.Status}}' "$1")"
    [[ "$status" == healthy ]] || die "podman inspect says $status after a passing health check"
    say "   healthy after $((SECONDS - t0)) s (HEALTHCHECK \`python3 -m proxy check\`, run by podman healthcheck run)"
}

phase "container of $BAKED: user, health, API, models, stop"
PROXY_API_KEY="$api_key" pm run -d --name "$name-serve" -p "127.0.0.1:$http_port:11434" \
    -e PROXY_API_KEY "${model_env[@]}" "$BAKED" python3 -m proxy serve >/dev/null
user="$(podman exec "$name-serve" id -un)"
uid="$(podman exec "$name-serve" id -u)"
[[ "$user" == deployment && "$uid" != 0 ]] || die "the container runs as $user (uid $uid)"
others="$(podman top "$name-serve" user | tail -n +2 | grep -vx deployment || true)"
[[ -z "$others" ]] || die "processes not run by deployment: $others"
ok "runs as $user (uid $uid), every process"
wait_healthy "$name-serve"

"$python" - "http://127.0.0.1:$http_port" "$api_key" "$CHAT_MODEL" "$EMBEDDING_MODEL" <<'PY' || die "API checks"
import json
import sys
import urllib.error
import urllib.request

base, key, chat, embed = sys.argv[1:]


def call(path, body=None, auth=key):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data)
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", f"Bearer {auth}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check(condition, message):
    if not condition:
        sys.exit(f"image-check: FAILED: {message}")
    print(f"image-check:    ok: {message}")


question = [{"role": "user", "content": "Why is the sky blue? One sentence."}]
status, body = call("/v1/chat/completions", {"model": chat, "messages": question, "max_tokens": 12})
answer = json.loads(body)["choices"][0]["message"]["content"] if status == 200 else ""
check(status == 200 and answer.strip(), f"chat with the key: 200, {answer.strip()[:60]!r}")

status, body = call(
    "/v1/chat/completions", {"model": chat, "messages": question, "max_tokens": 12, "stream": True}
)
events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
check(
    status == 200 and len(events) >= 3 and events[-1] == "[DONE]",
    f"streamed chat with the key: 200, {len(events) - 1} SSE chunks then [DONE]",
)

status, body = call("/v1/embeddings", {"model": embed, "input": "Hello!"})
vector = json.loads(body)["data"][0]["embedding"] if status == 200 else []
check(status == 200 and len(vector) > 0, f"embeddings with the key: 200, dimension {len(vector)}")

status, body = call("/api/tags")
names = {m["name"] for m in json.loads(body)["models"]} if status == 200 else set()
check(status == 200 and {chat, embed} <= names, f"/api/tags lists {sorted(names)}")

for path, body in [
    ("/v1/chat/completions", {"model": chat, "messages": question}),
    ("/v1/embeddings", {"model": embed, "input": "Hello!"}),
    ("/v1/models", None),
]:
    status, _ = call(path, body, auth=None)
    wrong, _ = call(path, body, auth="not-the-key-0123456789")
    check(status == 401 and wrong == 401, f"{path} without the key: 401, with a wrong key: 401")
PY

podman logs "$name-serve" >"$work/serve.log" 2>&1
! grep -q '"pulling model"' "$work/serve.log" || die "the baked image pulled at start"
! grep -q 'POST .*"/api/pull' "$work/serve.log" || die "Ollama was asked to pull"
present="$(grep -c '"model present"' "$work/serve.log" || true)"
((present == 2)) || die "expected both models present at start, the log says $present"
ok "pulled nothing at start: both models present (from the proxy's log)"

hpids="$(podman top "$name-serve" hpid | tail -n +2 | tr '\n' ' ')"
t0=$(date +%s%N)
pm stop -t "$STOP_TIMEOUT" "$name-serve" >/dev/null || die "podman stop failed"
took_ms=$((($(date +%s%N) - t0) / 1000000))
exit_code="$(podman inspect --format '{{.State.ExitCode}}' "$name-serve")"
podman logs "$name-serve" >"$work/serve.log" 2>&1
[[ "$exit_code" == 0 ]] || die "the proxy exited with status $exit_code on podman stop"
((took_ms < STOP_TIMEOUT * 1000)) || die "podman stop took $took_ms ms (grace $STOP_TIMEOUT s)"
grep -q '"ollama stopped"' "$work/serve.log" || die "the proxy did not stop Ollama"
! grep -q 'did not stop in time' "$work/serve.log" || die "Ollama had to be killed"
for pid in $hpids; do
    [[ ! -e "/proc/$pid" ]] || die "process $pid of the container is still running"
done
ok "podman stop: exit status 0 after $took_ms ms (grace $STOP_TIMEOUT s), Ollama stopped by the proxy, no process left (host pids $hpids)"
pm rm "$name-serve" >/dev/null
phase_done "container (baked)"

phase "deployment_package/ under ubiops.utils.run_local, in the image"
pm run --rm -i --name "$name-probe" -v "$root/deployment_package:/opt/deployment_package:ro" \
    "${model_env[@]}" "$RUN_LOCAL_IMAGE" python3 - "$CHAT_MODEL" >"$work/run-local.json" 2>"$work/run-local.log" <<'PY' ||
import json
import os
import sys
import time

import ubiops
from ubiops.utils import run_local

# The deployment's (and the proxy's) output goes to stderr; stdout carries only the result.
result_out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
chat = sys.argv[1]
updates = []
started = time.monotonic()
init_context = {
    "project": "image-check",
    "deployment": "ollama-multi-model-server",
    "version": "v1",
    "input_type": "plain",
    "output_type": "plain",
    "language": "python",
    "process_id": 0,
}
request_context = {"id": "image-check", "request_mode": "direct", "streaming_update": updates.append}
data = json.dumps(
    {
        "model": chat,
        "messages": [{"role": "user", "content": "Why is the sky blue? One sentence."}],
        "max_tokens": 12,
        "stream": True,
    }
)
result = run_local("/opt/deployment_package", data, init_context, request_context)
text = "".join(
    (json.loads(u)["choices"] or [{}])[0].get("delta", {}).get("content") or "" for u in updates
)
result_out.write(
    json.dumps(
        {
            "ubiops": getattr(ubiops, "__version__", "?"),
            "updates": len(updates),
            "text": text,
            "result_type": type(result).__name__,
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    + "\n"
)
result_out.flush()
PY
    {
        tail -n 30 "$work/run-local.log" >&2
        die "run_local failed (its output above)"
    }
result="$(cat "$work/run-local.json")"
"$python" - "$result" <<'PY' || die "run_local: $result"
import json
import sys

r = json.loads(sys.argv[1])
assert r["updates"] >= 2 and r["text"].strip(), r
print(
    f"image-check:    ok: ubiops {r['ubiops']} run_local: {r['updates']} chunks through "
    f"streaming_update in {r['seconds']} s (init included), {r['text'].strip()[:60]!r}"
)
PY
phase_done "run_local"

phase "container of $IMAGE (no models baked)"
if [[ "$kind" == real ]]; then
    # A real Ollama cannot pull here (no model registry is reachable): this container gets the
    # models from a volume instead, a copy owned by the container's user (podman's :U).
    cp -a "$real_models" "$work/models"
    volume=(-v "$work/models:/opt/ollama/models:U")
    expect="model present"
    what="found in a volume at /opt/ollama/models (a real Ollama cannot pull here)"
else
    volume=()
    expect="model pulled"
    what="pulled at start (from the simulator's registry)"
fi
PROXY_API_KEY="$api_key" pm run -d --name "$name-pull" "${volume[@]}" -e PROXY_API_KEY \
    "${model_env[@]}" "$IMAGE" python3 -m proxy serve >/dev/null
wait_healthy "$name-pull"
podman logs "$name-pull" >"$work/pull.log" 2>&1
count="$(grep -c "\"$expect\"" "$work/pull.log" || true)"
((count == 2)) || die "expected both models $expect at start, the log says $count"
if [[ "$kind" == real ]]; then
    ! grep -q '"pulling model"' "$work/pull.log" || die "a pull was attempted"
fi
ok "both models $what"
pm stop -t "$STOP_TIMEOUT" "$name-pull" >/dev/null
[[ "$(podman inspect --format '{{.State.ExitCode}}' "$name-pull")" == 0 ]] ||
    die "podman stop: exit status not 0"
pm rm "$name-pull" >/dev/null
phase_done "container (no models)"

# --- the archives deploy.sh uploads ------------------------------------------------------------
phase "podman save --format docker-archive"
extra_certs="$work/extra-ca.pem"
if [[ -n "$ca_bundle" ]]; then
    pm run --rm "$IMAGE" cat /etc/ssl/certs/ca-certificates.crt >"$work/image-ca.pem"
    "$python" - "$ca_bundle" "$work/image-ca.pem" "$extra_certs" <<'PY'
import re
import sys

block = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
given, image, out = sys.argv[1:]
own = {"".join(b.split()) for b in block.findall(open(image).read())}
extra = [b for b in block.findall(open(given).read()) if "".join(b.split()) not in own]
open(out, "w").write("\n".join(extra))
PY
fi
declare -A sizes
for image in "$IMAGE" "$BAKED"; do
    archive="$work/${image##*:}.tar"
    pm save --quiet --format docker-archive -o "$archive" "$image"
    sizes[$image]="$(stat -c %s "$archive")"
    image_id="$(podman image inspect --format '{{.Id}}' "$image")"
    "$python" - "$archive" "$image_id" "$extra_certs" <<'PY' || die "archive of $image"
import json
import mmap
import re
import sys
import tarfile
from pathlib import Path

from proxy.deploy.package import image_identity

archive, image_id, extra_path = sys.argv[1:]
identity = image_identity(Path(archive))
assert identity == image_id, f"deploy.sh would tag it {identity}, podman says {image_id}"
with tarfile.open(archive) as tar:
    manifest = json.load(tar.extractfile("manifest.json"))
    config = json.load(tar.extractfile(manifest[0]["Config"]))["config"]
assert config.get("Healthcheck", {}).get("Test") == ["CMD", "python3", "-m", "proxy", "check"], config
assert config.get("User") == "deployment", config.get("User")
assert not any(e.split("=")[0] in {"SSL_CERT_FILE", "PIP_CERT"} for e in config["Env"]), config["Env"]
# No certificate of the build-only bundle (beyond the image's own CAs) in any layer or config.
try:
    extra = re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)\n", open(extra_path).read())
except FileNotFoundError:
    extra = []
with open(archive, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
    found = [line[:16] for line in extra if data.find(line.encode()) >= 0]
assert not found, f"build CA certificates found in the archive: {found}"
print(
    f"image-check:    ok: image id {image_id[:12]}, as deploy.sh reads it from the archive; "
    f"HEALTHCHECK and user deployment in its config; {len(extra)} build-only CA certificate(s) "
    "in no layer"
)
PY
    say "   $image: $archive, $(numfmt --to=iec --suffix=B "${sizes[$image]}") (${sizes[$image]} bytes)"
done
pm run --rm "$IMAGE" test ! -e /run/secrets/ca_bundle || die "the CA bundle is in the image"
phase_done "save"

echo
say "image sizes ($kind Ollama $ollama_version, base $BASE):"
for image in "$IMAGE" "$BAKED"; do
    say "   $(printf '%-42s' "$image") $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec --suffix=B)" \
        "in podman, $(numfmt --to=iec --suffix=B "${sizes[$image]}") as a docker-archive"
done
say "timings:"
printf 'image-check: %s\n' "${timings[@]}"
say "passed in $((SECONDS - started)) s"
