# syntax=docker/dockerfile:1
#
# The environment image: Ollama (pinned, checksum-verified) plus this project installed from
# uv.lock into the image's Python, running as the non-root user `deployment`.
#
#   docker build -t ollama-ubiops .                                   # local test image
#   docker build -t ollama-ubiops \
#     --build-arg BASE_IMAGE=<registry>/ubiops-deployment-instance-ubuntu24.04-python3.13:v5.17.2 .
#   docker save -o ollama-ubiops.tar ollama-ubiops                   # what UbiOps takes
#
# With podman: `podman build --format docker ...` (the OCI format drops HEALTHCHECK), then
# `podman save --format docker-archive -o ollama-ubiops.tar ollama-ubiops`.
# scripts/deploy.sh --build does both with docker or podman and uploads the archive.
#
# Build arguments:
#   BASE_IMAGE             the UbiOps base image (with its request agent) for UbiOps; the public
#                          default is for local builds only.
#   BUILD_IMAGE            the image of the build stages (any Debian/Ubuntu with python3, venv).
#   OLLAMA_VERSION/_SHA256 the pinned Ollama release and the sha256 of its linux-amd64 archive
#                          (releases >= 0.14 ship .tar.zst, older ones .tgz: set OLLAMA_ARCHIVE).
#                          The default is the release the tests run against (scripts/real-ollama.sh
#                          builds the same tag from source) and the simulator follows.
#   OLLAMA_URL             where to download that archive from (default: the GitHub release), e.g.
#                          an internal mirror; the sha256 check applies all the same.
#   OLLAMA_GPU=true        keep Ollama's CUDA/ROCm/Vulkan libraries (GPU instance types); the
#                          default strips them, which makes the image about 1.5 GB smaller.
#   BAKE_CHAT_MODELS / BAKE_EMBEDDING_MODELS
#                          comma-separated models to pull into the image at build time (with
#                          `python3 -m proxy pull`); without them the models are pulled at start.
#   BAKE_MODELS_URL / BAKE_MODELS_SHA256
#                          a tar (any compression GNU tar reads) of an Ollama models directory
#                          (blobs/ and manifests/ at its root) and its sha256, unpacked into the
#                          image before the pull above, which then only checks that the models are
#                          there: baking without access to the Ollama registry (air-gapped).
#
# Build secret `ca_bundle` (optional): a PEM bundle trusted for HTTPS during the build only (the
# Ollama and models downloads, pip, the model pulls), for networks that inspect TLS. Give a
# complete bundle that includes the inspecting CA, e.g. the build machine's system bundle:
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt ...
# It is mounted per step and never written to a layer.
#
# Python: the packages go into the environment the base image's `python3` belongs to (the UbiOps
# base images' own environment, where their agent runs deployment.py). A base image whose system
# Python is externally managed (PEP 668, e.g. Debian's) gets a virtual environment at /opt/venv,
# first on PATH, instead.
#
# No CMD or ENTRYPOINT: the UbiOps base image's agent must stay the entry point. To run the proxy
# from a local build: docker run --rm -p 11434:11434 -e PROXY_API_KEY=... ollama-ubiops \
#   python3 -m proxy serve

ARG BASE_IMAGE=python:3.13-slim-bookworm
ARG BUILD_IMAGE=python:3.13-slim-bookworm

# ---- Ollama: download the release archive, verify its sha256, unpack ----------------------------
FROM ${BUILD_IMAGE} AS ollama
ARG OLLAMA_VERSION=0.24.0
ARG OLLAMA_ARCHIVE=ollama-linux-amd64.tar.zst
ARG OLLAMA_SHA256=15c5f8d66ba06e0d3b4719df8868612dbd66e14e82760929bb3552e1657cdcdb
ARG OLLAMA_URL=""
ARG OLLAMA_GPU=false
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends zstd=1.5.4+dfsg2-5 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/ollama
RUN --mount=type=secret,id=ca_bundle,mode=0444 \
    if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi \
    && if [[ ! "${OLLAMA_SHA256}" =~ ^[0-9a-f]{64}$ ]]; then \
        echo "OLLAMA_SHA256 must be the sha256 of ${OLLAMA_ARCHIVE} of Ollama v${OLLAMA_VERSION}" >&2; \
        exit 1; \
    fi \
    && python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "${OLLAMA_URL:-https://github.com/ollama/ollama/releases/download/v${OLLAMA_VERSION}/${OLLAMA_ARCHIVE}}" \
        "${OLLAMA_ARCHIVE}" \
    && echo "${OLLAMA_SHA256}  ${OLLAMA_ARCHIVE}" | sha256sum --check --strict - \
    && mkdir -p /opt/ollama \
    && tar -xf "${OLLAMA_ARCHIVE}" -C /opt/ollama \
    && rm "${OLLAMA_ARCHIVE}" \
    && if [[ "${OLLAMA_GPU}" != "true" ]]; then \
        find /opt/ollama/lib/ollama -mindepth 1 -maxdepth 1 -type d \
            \( -name 'cuda_*' -o -name 'rocm*' -o -name 'vulkan*' \) -exec rm -rf {} +; \
    fi \
    && test -x /opt/ollama/bin/ollama

# ---- Optional pre-made models directory (BAKE_MODELS_URL), verified and unpacked ---------------
FROM ollama AS models
ARG BAKE_MODELS_URL=""
ARG BAKE_MODELS_SHA256=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /models
RUN --mount=type=secret,id=ca_bundle,mode=0444 \
    if [ -z "${BAKE_MODELS_URL}" ]; then exit 0; fi \
    && if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi \
    && if [[ ! "${BAKE_MODELS_SHA256}" =~ ^[0-9a-f]{64}$ ]]; then \
        echo "BAKE_MODELS_SHA256 must be the sha256 of the archive at BAKE_MODELS_URL" >&2; \
        exit 1; \
    fi \
    && python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "${BAKE_MODELS_URL}" /tmp/models.tar \
    && echo "${BAKE_MODELS_SHA256}  /tmp/models.tar" | sha256sum --check --strict - \
    && tar -xf /tmp/models.tar -C /models --no-same-owner \
    && rm /tmp/models.tar \
    && test -d /models/manifests

# ---- Python requirements, exported from uv.lock (exact versions and hashes) ---------------------
FROM ${BUILD_IMAGE} AS requirements
WORKDIR /src
RUN --mount=type=secret,id=ca_bundle,mode=0444 \
    if [ -s /run/secrets/ca_bundle ]; then \
        export SSL_CERT_FILE=/run/secrets/ca_bundle PIP_CERT=/run/secrets/ca_bundle; \
    fi \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/python -m pip install --no-cache-dir --disable-pip-version-check uv==0.13.9
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv export --frozen --no-dev --no-emit-project --format requirements-txt \
        --output-file /requirements.txt

# ---- The image ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV OLLAMA_MODELS=/opt/ollama/models \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Only exists when the base image's Python is externally managed (see the top of this file).
ENV PATH="/opt/venv/bin:${PATH}"
# The UbiOps base images run as `deployment`; a plain Python image gets the same user.
RUN if ! id -u deployment >/dev/null 2>&1; then \
        useradd --create-home --shell /bin/bash deployment; \
    fi \
    && mkdir -p "${OLLAMA_MODELS}" /opt/app \
    && chown -R deployment: /opt/ollama /opt/app \
    && if python3 -c 'import pathlib, sys, sysconfig; \
            marker = pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"); \
            sys.exit(sys.prefix != sys.base_prefix or not marker.exists())'; then \
        python3 -m venv /opt/venv && chown -R deployment: /opt/venv; \
    fi

# Install as `deployment`, like the UbiOps tutorials: into the Python environment the agent runs
# deployment.py with (a user-site install on a plain Python image, /opt/venv on Debian's).
# `python3`, not `python`: an Ubuntu base has no `python` unless a virtual environment is first on
# its PATH. The uid of `deployment` in the UbiOps base image is not known here, so the name is used.
# hadolint ignore=DL3066
USER deployment
WORKDIR /opt/app
COPY --from=requirements --chown=deployment /requirements.txt ./
RUN --mount=type=secret,id=ca_bundle,mode=0444 \
    if [ -s /run/secrets/ca_bundle ]; then \
        export SSL_CERT_FILE=/run/secrets/ca_bundle PIP_CERT=/run/secrets/ca_bundle; \
    fi \
    && python3 -m pip install --no-cache-dir --require-hashes -r requirements.txt
COPY --from=ollama /opt/ollama/bin/ollama /usr/local/bin/ollama
COPY --from=ollama /opt/ollama/lib/ollama /usr/local/lib/ollama
COPY --from=models --chown=deployment /models/ /opt/ollama/models/
COPY --chown=deployment pyproject.toml README.md ./
COPY --chown=deployment proxy/ proxy/
RUN --mount=type=secret,id=ca_bundle,mode=0444 \
    if [ -s /run/secrets/ca_bundle ]; then \
        export SSL_CERT_FILE=/run/secrets/ca_bundle PIP_CERT=/run/secrets/ca_bundle; \
    fi \
    && python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -P -c 'import proxy.config'

ARG BAKE_CHAT_MODELS=""
ARG BAKE_EMBEDDING_MODELS=""
RUN --mount=type=secret,id=ca_bundle,mode=0444 \
    if [ -n "${BAKE_CHAT_MODELS}${BAKE_EMBEDDING_MODELS}" ]; then \
        if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi; \
        OLLAMA_CHAT_MODELS="${BAKE_CHAT_MODELS}" \
        OLLAMA_EMBEDDING_MODELS="${BAKE_EMBEDDING_MODELS}" \
        PRELOAD_MODELS=false \
        python3 -m proxy pull; \
    fi

EXPOSE 11434
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["python3", "-m", "proxy", "check"]
