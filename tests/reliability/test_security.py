"""Security: authentication on every route, management refused without the admin key, Ollama on
loopback only, a non-loopback OLLAMA_INTERNAL_HOST refused at start, no secret in any log line
(keys sent in odd places included), and constant-time key comparison."""

from __future__ import annotations

import ast
import inspect
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

import proxy.keys
import proxy.middlewares
import proxy.routes

from .helpers import (
    ADMIN_KEY,
    API_KEY,
    CHAT,
    EMBED,
    REPO,
    SECRETS,
    TALLY,
    ProxyProcess,
    base_env,
    build_request,
    capture_log,
    raw_http,
    start_proxy,
    user_messages,
    wait_until,
)

pytestmark = pytest.mark.reliability

ROUTES: list[tuple[str, str]] = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/messages"),
    ("GET", "/v1/models"),
    ("GET", f"/v1/models/{CHAT}"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("GET", "/api/tags"),
    ("GET", "/api/ps"),
    ("GET", "/api/version"),
    ("GET", "/"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
    ("POST", "/v1/no-such-route"),
]
MANAGEMENT: list[tuple[str, str]] = [
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("POST", "/api/blobs/sha256:" + "0" * 64),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64),
]
REFUSED: list[tuple[str, str]] = [
    ("POST", "/api/me"),
    ("POST", "/api/signout"),
    ("DELETE", "/api/user/keys/abc"),
    ("POST", "/api/experimental/web_search"),
    ("POST", "/api/experimental/web_fetch"),
    ("GET", "/api/experimental/model-recommendations"),
]
OPEN = [("GET", "/healthz"), ("GET", "/readyz")]
BAD_CREDENTIALS: dict[str, list[tuple[str, str]]] = {
    "none": [],
    "wrong": [("Authorization", "Bearer wrong-key-0123456789abcdef")],
    "key-as-prefix": [("Authorization", f"Bearer {API_KEY}x")],
    "prefix-of-key": [("Authorization", f"Bearer {API_KEY[:-1]}")],
    "key-twice": [("Authorization", f"Bearer {API_KEY}{API_KEY}")],
    "empty-bearer": [("Authorization", "Bearer ")],
    "basic-scheme": [("Authorization", f"Basic {API_KEY}")],
    "no-scheme": [("Authorization", API_KEY)],
    "wrong-x-api-key": [("X-Api-Key", f"{API_KEY}0")],
    "non-ascii": [("Authorization", "Bearer ключ-0123456789abcdef")],
}
EXIT_CONFIG_ERROR = 2


def _body(path: str) -> bytes | None:
    if "embed" in path:
        return json.dumps({"model": EMBED, "input": "x"}).encode()
    if path.startswith(("/v1/", "/api/")) and "models" not in path:
        return json.dumps({"model": CHAT, "messages": user_messages("x"), "prompt": "x"}).encode()
    return None


def _status(proxy: ProxyProcess, method: str, path: str, headers: list[tuple[str, str]]) -> int:
    request = build_request(method, path, body=_body(path), headers=headers, auth=False)
    if method == "HEAD":
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(request)
            return int(sock.recv(4096).split(b" ", 2)[1])
    response = raw_http(proxy.port, request)
    if response.status == 401:
        assert response.headers.get("www-authenticate") == "Bearer"
        body = response.json()
        if path == "/v1/messages":
            assert body["error"]["type"] == "authentication_error", body
        elif path.startswith("/v1/"):
            assert body["error"]["code"] == "invalid_api_key", body
        else:
            assert isinstance(body["error"], str), body
    return response.status


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
def test_every_route_without_the_key_is_401_except_health(
    main_proxy: ProxyProcess, credentials: str
) -> None:
    headers = BAD_CREDENTIALS[credentials]
    for method, path in ROUTES + MANAGEMENT + REFUSED:
        assert _status(main_proxy, method, path, headers) == 401, (credentials, method, path)
    for method, path in OPEN:
        assert _status(main_proxy, method, path, headers) == 200, (credentials, method, path)


def test_keys_work_where_they_should(main_proxy: ProxyProcess) -> None:
    for headers in (
        [("Authorization", f"Bearer {API_KEY}")],
        [("Authorization", f"bearer  {API_KEY} ")],
        [("X-Api-Key", API_KEY)],
        [("Authorization", f"Bearer {ADMIN_KEY}")],
    ):
        assert _status(main_proxy, "GET", "/v1/models", headers) == 200, headers
        assert _status(main_proxy, "POST", "/api/embed", headers) == 200, headers


def test_account_and_cloud_features_are_403_even_with_the_admin_key(
    main_proxy: ProxyProcess,
) -> None:
    for method, path in REFUSED:
        for key in (API_KEY, ADMIN_KEY):
            status = _status(main_proxy, method, path, [("Authorization", f"Bearer {key}")])
            assert status == 403, (method, path)


def test_management_routes_are_403_even_with_the_api_key(main_proxy: ProxyProcess) -> None:
    api = [("Authorization", f"Bearer {API_KEY}")]
    for method, path in MANAGEMENT:
        assert _status(main_proxy, method, path, api) == 403, (method, path)
    # With the admin key they reach Ollama (which answers for itself: nothing to delete here).
    admin = [("Authorization", f"Bearer {ADMIN_KEY}")]
    request = build_request(
        "DELETE",
        "/api/delete",
        body=json.dumps({"model": "no-such-model:1b"}).encode(),
        headers=admin,
        auth=False,
    )
    response = raw_http(main_proxy.port, request)
    assert response.status == 404, response.body[:200]
    assert "not found" in response.json()["error"]


def _listening(pid: int) -> list[str]:
    return [
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def test_ollama_and_the_proxy_listen_on_loopback_only(main_proxy: ProxyProcess) -> None:
    sim = main_proxy.wait_ollama()
    assert _listening(sim.pid) == ["127.0.0.1"], "Ollama is reachable on loopback only"
    assert set(_listening(main_proxy.pid)) == {"127.0.0.1"}
    environ = sim.environ()
    for name in ("PROXY_API_KEY", "PROXY_ADMIN_KEY", "UBIOPS_API_TOKEN"):
        assert name not in environ, f"Ollama does not need (or get) {name}"


def test_without_an_api_key_the_proxy_binds_loopback_only(tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, "no-key", PROXY_HOST="0.0.0.0", PROXY_API_KEY="")
    try:
        wait_until(lambda: _listening(proxy.pid), 20, "the proxy to listen")
        assert set(_listening(proxy.pid)) == {"127.0.0.1"}
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0:11435", "[::]:11435", "10.1.2.3:11435", "example.com:11435", "http://0.0.0.0"],
)
def test_non_loopback_ollama_host_refuses_to_start(tmp_path: Path, host: str) -> None:
    env = base_env(tmp_path, OLLAMA_INTERNAL_HOST=host)
    log = capture_log(tmp_path / "refused.log")
    started = time.monotonic()
    with log.open("wb") as out:
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            timeout=30,
            check=False,
        )
    lines = log.read_text().splitlines()
    assert result.returncode == EXIT_CONFIG_ERROR, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("config error: OLLAMA_INTERNAL_HOST: "), lines
    assert "loopback" in lines[0]
    assert time.monotonic() - started < 15
    assert not list(Path(env["OLLAMA_MODELS"]).iterdir()), "Ollama never ran"
    TALLY.hostile("config-refused")


def test_secrets_sent_in_odd_places_never_reach_the_log(main_proxy: ProxyProcess) -> None:
    """The log is scanned for every secret at the end of the session too; this checks the
    shared proxy's log right after sending keys where they do not belong."""
    port = main_proxy.port
    requests: list[bytes] = []
    for secret in (API_KEY, ADMIN_KEY):
        requests += [
            build_request("GET", f"/v1/models?api_key={secret}&key={secret}"),
            build_request("GET", f"/api/tags?token={quote(secret)}", auth=False),
            build_request("GET", f"/v1/models/{secret}"),
            build_request("GET", f"/v1/models/{secret}x"),
            build_request(
                "POST",
                "/v1/chat/completions",
                body=json.dumps({"model": secret, "messages": user_messages("x")}).encode(),
            ),
            build_request(
                "POST",
                "/api/chat",
                body=json.dumps(
                    {"model": CHAT, "messages": user_messages(secret), "stream": False}
                ).encode(),
            ),
            build_request("POST", "/api/show", body=json.dumps({"name": secret}).encode()),
            build_request("GET", "/api/tags", headers=[("X-Request-ID", secret)]),
            build_request("GET", "/api/tags", headers=[("X-Api-Key", secret + "x")], auth=False),
            build_request(
                "GET", "/v1/models", headers=[("Authorization", f"Bearer {secret}!")], auth=False
            ),
            build_request("POST", "/api/pull", body=json.dumps({"model": secret}).encode()),
            # Malformed HTTP whose offending line holds the key: aiohttp logs such lines.
            f"GET /api/tags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\rX\r\n"
            "\r\n".encode(),
            f"GET /api/tags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}{'x' * 9000}"
            "\r\n\r\n".encode(),
            f"GET /api/tags?k={secret}\x00 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            f"GET /{secret} HTTP/1.1\r\nHost: x\r\nX-{secret}: y\r\nBad Header\r\n\r\n".encode(),
        ]
    for request in requests:
        try:
            response = raw_http(port, request)
        except OSError:
            continue
        assert response.status < 500, (request[:80], response.status)
    time.sleep(0.2)  # let the proxy flush its last log lines
    leaks = [
        (name, line[:200])
        for line in main_proxy.log_lines()
        for name, secret in SECRETS.items()
        if secret in line
    ]
    assert not leaks, leaks[:5]
    TALLY.hostile("secret-placements", len(requests))


def test_keys_are_compared_in_constant_time() -> None:
    """Code inspection (timing tests are flaky): a presented key is hashed and compared with
    every stored hash by hmac.compare_digest; no ``==``/``!=``/``in`` touches a key or token."""
    secret_names = {"key", "keys", "token", "presented", "api_key", "admin_key", "digest"}
    for module in (proxy.keys, proxy.middlewares):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Compare):
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                if any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                    assert not names & secret_names, (
                        f"non-constant-time comparison: {ast.unparse(node)}"
                    )
    identify = inspect.getsource(proxy.keys.KeyRing.identify)
    assert "hmac.compare_digest" in identify
    assert "for spec in self._specs" in identify, "every key is compared, always"
    # Management and the operator's policy ask who the caller is, never compare keys by hand.
    routes = inspect.getsource(proxy.routes)
    assert "compare_digest" not in routes
    assert ".admin" in routes
