"""Helpers for the reliability suite: real proxy subprocesses, log capture, psutil probes, stream
parsers that check every chunk against the simulator's deterministic output, and the tally that
the session summary prints.

Every secret used here is random per session, so scanning the captured logs for it cannot hit
by accident. Timeouts are named constants; waiting is done by polling a condition.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import socket
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from proxy.testing.harness import http_json as http_json
from proxy.testing.harness import proxy_env
from proxy.testing.harness import wait_until as wait_until
from proxy.testing.services import ProxyProcess
from proxy.testing.simulator import expected_embedding, expected_tokens
from tests.process_tools import alive as alive
from tests.process_tools import is_sim as is_sim
from tests.process_tools import kill_tree as kill_tree
from tests.process_tools import sims_using as sims_using

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "deployment_package"
SIM_BIN = Path(sys.executable).with_name("ollama-sim")

API_KEY = "rel-api-" + secrets.token_hex(16)
ADMIN_KEY = "rel-admin-" + secrets.token_hex(16)
UBIOPS_TOKEN = "Token rel-ubiops-" + secrets.token_hex(16)
SECRETS = {"PROXY_API_KEY": API_KEY, "PROXY_ADMIN_KEY": ADMIN_KEY, "UBIOPS_API_TOKEN": UBIOPS_TOKEN}

CHAT = "smollm2:135m"
EMBED = "all-minilm:l6-v2"
CHAT_ALIAS = "gpt-4o-mini"
EMBED_ALIAS = "text-embedding-3-small"

READY_TIMEOUT = 30.0
"""The longest a proxy may take to become ready (seconds)."""
EXIT_TIMEOUT = 20.0
"""The longest a process may take to exit when told to (seconds)."""
HTTP_TIMEOUT = 10.0
"""One plain test HTTP request (seconds)."""


# -- session bookkeeping ------------------------------------------------------------------------


@dataclass
class Tally:
    """What the suite did, for the summary table; tests add to it as they go."""

    load_requests: int = 0
    load_chunks: int = 0
    ubiops_requests: int = 0
    ubiops_chunks: int = 0
    faults: dict[str, str] = field(default_factory=dict)
    generated: Counter[str] = field(default_factory=Counter)
    """Hostile inputs hypothesis generated, by target."""
    explicit: Counter[str] = field(default_factory=Counter)
    """Hand-written hostile inputs, by kind."""
    errors: list[str] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    log_lines_scanned: int = 0

    def fault(self, name: str, detail: str = "") -> None:
        """Record a fault survived (the last ``detail`` wins)."""
        self.faults[name] = detail

    def hostile(self, target: str, count: int = 1, *, generated: bool = False) -> None:
        (self.generated if generated else self.explicit)[target] += count


TALLY = Tally()


def capture_log(path: Path) -> Path:
    """Register ``path`` (a subprocess's stdout/stderr) for the end-of-session secret scan."""
    if path not in TALLY.log_files:
        TALLY.log_files.append(path)
    return path


@contextlib.contextmanager
def fds_redirected(path: Path) -> Iterator[None]:
    """Point this process's fds 1 and 2 at ``path`` while children are spawned (they inherit
    it: multiprocessing ``spawn`` children and their own subprocesses), then restore them."""
    capture_log(path)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


# -- waiting --------------------------------------------------------------------------------------


# -- processes ------------------------------------------------------------------------------------


def tcp_connections(pid: int, port: int, *, remote: bool = True) -> list[Any]:
    """The TCP sockets of ``pid`` whose remote (or local) port is ``port``."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []
    if remote:
        return [c for c in conns if c.raddr and c.raddr.port == port]
    return [c for c in conns if c.laddr and c.laddr.port == port and c.raddr]


def established(conns: Sequence[Any]) -> list[Any]:
    return [c for c in conns if c.status == psutil.CONN_ESTABLISHED]


def base_env(tmp: Path, **overrides: str) -> dict[str, str]:
    """:func:`~proxy.testing.harness.proxy_env` with both keys, the aliases and the fake UbiOps
    token (present so that the log scan can look for it)."""
    defaults = {
        "MODEL_ALIASES": f"{CHAT_ALIAS}={CHAT};{EMBED_ALIAS}={EMBED}",
        "PROXY_API_KEY": API_KEY,
        "PROXY_ADMIN_KEY": ADMIN_KEY,
        "UBIOPS_API_TOKEN": UBIOPS_TOKEN,
    }
    return proxy_env(tmp, **{**defaults, **overrides})


def start_proxy(tmp: Path, name: str, **env: str) -> ProxyProcess:
    """Spawn ``python -m proxy serve`` with :func:`base_env` plus ``env``; output captured."""
    return ProxyProcess(base_env(tmp, **env), log_path=capture_log(tmp / f"{name}.log")).spawn()


# -- expected output, checked chunk by chunk -------------------------------------------------------


class StreamMismatch(AssertionError):
    """A chunk differs from what the simulator must have sent."""


def user_messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def check_sse_chat(
    events: Sequence[str], messages: Any, num_tokens: int, *, usage: bool = False
) -> int:
    """``data:`` texts of a /v1/chat/completions stream: one token per chunk, in order, then the
    finish chunk, then (``usage``) the usage chunk, then ``[DONE]`` once. Returns the number of
    chunks checked."""
    tokens = expected_tokens(CHAT, messages, num_tokens)
    if not events or events[-1] != "[DONE]":
        raise StreamMismatch(f"the stream does not end with [DONE]: {events[-2:]}")
    chunks = [json.loads(e) for e in events[:-1]]
    if usage:
        last = chunks.pop()
        if last["choices"] or last["usage"]["completion_tokens"] != len(tokens):
            raise StreamMismatch(f"no usage chunk for {len(tokens)} tokens: {last}")
    if len(chunks) != len(tokens) + 1:
        raise StreamMismatch(f"{len(chunks)} chunks for {len(tokens)} tokens")
    for i, (chunk, token) in enumerate(zip(chunks, tokens, strict=False)):
        delta = chunk["choices"][0]["delta"]
        if delta.get("content") != token:
            raise StreamMismatch(f"chunk {i}: {delta!r} is not token {token!r}")
    if chunks[-1]["choices"][0]["finish_reason"] not in ("stop", "length"):
        raise StreamMismatch(f"last chunk has no finish_reason: {chunks[-1]}")
    return len(events)


def check_ndjson(lines: Sequence[bytes], prompt: Any, num_tokens: int, *, chat: bool) -> int:
    """Lines of /api/chat or /api/generate: one token per line, in order, then ``done``."""
    tokens = expected_tokens(CHAT, prompt, num_tokens)
    objs = [json.loads(line) for line in lines if line.strip()]
    if len(objs) != len(tokens) + 1:
        raise StreamMismatch(f"{len(objs)} lines for {len(tokens)} tokens: {objs[-1:]}")
    for i, (obj, token) in enumerate(zip(objs, tokens, strict=False)):
        text = obj["message"]["content"] if chat else obj["response"]
        if text != token or obj["done"] is not False:
            raise StreamMismatch(f"line {i}: {obj!r} is not token {token!r}")
    if objs[-1].get("done") is not True:
        raise StreamMismatch(f"the last line is not done: {objs[-1]}")
    return len(objs)


def check_embedding(vector: Sequence[float], text: str) -> None:
    expected = expected_embedding(EMBED, text)
    if len(vector) != len(expected) or any(
        abs(a - b) > 1e-6 for a, b in zip(vector, expected, strict=True)
    ):
        raise StreamMismatch(f"the embedding of {text!r} differs from the simulator's")


def sse_data(raw: bytes) -> list[str]:
    """The ``data:`` texts of a complete SSE body."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data).decode())
    return out


# -- raw HTTP -------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_http(
    port: int, request: bytes, *, timeout: float = HTTP_TIMEOUT, host: str = "127.0.0.1"
) -> RawResponse:
    """Send ``request`` (exact bytes) on a fresh connection and parse one response.

    Raises:
        OSError: the connection failed or was closed before an answer.
        http.client.HTTPException: the answer is not HTTP.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode())
        response.begin()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return RawResponse(response.status, headers, body)


def build_request(
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Sequence[tuple[str | bytes, str | bytes]] = (),
    auth: bool = True,
) -> bytes:
    """An HTTP/1.1 request with ``Connection: close`` and the API key unless ``auth=False``."""
    lines: list[bytes] = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if auth:
        lines.append(f"Authorization: Bearer {API_KEY}".encode())
    for name, value in headers:
        name_b = name.encode() if isinstance(name, str) else name
        value_b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        lines.append(name_b + b": " + value_b)
    if body is not None:
        lines.append(b"Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled Prometheus sample ``name`` in ``text``."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None
