"""Hostile input against every public route of one long-lived proxy (+ simulator), and against
``Deployment.request``: property-based (hypothesis) random and malformed JSON, wrong types,
missing fields, huge strings, path-like model names, invalid UTF-8, header injection, oversized
bodies; plus explicit deep nesting, lone surrogates and slow clients.

The property: every answer is a success or a 4xx in the API's own error shape
(``{"error": {"message", ...}}`` for ``/v1``, ``{"error": "..."}`` elsewhere) or a UbiOps public
error; never a 5xx, never a traceback, never a crash; the service answers normally after every
batch.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.testing.simulator import expected_text
from proxy.ubiops_request import PublicError

from .conftest import MAIN_CLIENT_TIMEOUT, MAIN_MAX_BODY
from .helpers import (
    ADMIN_KEY,
    API_KEY,
    CHAT,
    CHAT_ALIAS,
    EMBED,
    EMBED_ALIAS,
    PACKAGE_DIR,
    TALLY,
    ProxyProcess,
    RawResponse,
    build_request,
    http_json,
    raw_http,
    sse_data,
    user_messages,
)

pytestmark = pytest.mark.reliability

EXAMPLES = 100
"""Hypothesis examples per route and strategy."""
HOSTILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # the health check runs once per batch, on purpose
    ],
)
DEEP = 10_000
"""Nesting depth of the deep-nesting bodies."""
SLOW_CLIENT_MARGIN = 3.0
"""Beyond the proposed PROXY_CLIENT_TIMEOUT, how long a stalled client may stay connected."""

MODEL_ROUTES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": CHAT, "messages": user_messages("hi"), "stream": True},
    "/v1/completions": {"model": CHAT_ALIAS, "prompt": "hi", "stream": False},
    "/v1/embeddings": {"model": EMBED_ALIAS, "input": ["a", "b"]},
    "/api/chat": {"model": CHAT, "messages": user_messages("hi")},
    "/api/generate": {"model": CHAT, "prompt": "hi", "stream": False},
    "/api/embed": {"model": EMBED, "input": "a"},
    "/api/embeddings": {"model": EMBED, "prompt": "a"},
    "/api/show": {"model": CHAT},
    "/v1/responses": {"model": CHAT, "input": "hi", "stream": True},
    "/v1/messages": {
        "model": CHAT_ALIAS,
        "max_tokens": 20,
        "messages": user_messages("hi"),
        "stream": True,
    },
}
LAST_EVENTS = {"/v1/responses": "response.completed", "/v1/messages": "message_stop"}
"""The event a stream of named events ends with, by route."""
GET_ROUTES = ("/v1/models", "/api/tags", "/api/ps", "/api/version", "/", "/healthz", "/readyz")
MANAGEMENT_ROUTES = (
    "/api/pull",
    "/api/push",
    "/api/delete",
    "/api/create",
    "/api/copy",
    "/api/blobs/sha256:" + "0" * 64,
)
PATHLIKE_NAMES = (
    "../x",
    "a/b/c/d/e",
    "%2e%2e",
    "%2e%2e%2fsmollm2",
    "../../../../etc/passwd",
    "..\\..\\windows",
    "/etc/passwd",
    "ubiops-deployment/dep/v1/../../x",
    "ubiops-deployment/dep//" + CHAT,
    "ubiops-deployment/dep/v1/" + EMBED,
    "registry.ollama.ai/library/smollm2:135m",
    "smollm2:135m/../../x",
    CHAT.upper(),
    CHAT + "\n",
    CHAT + "\x00",
    "",
    " ",
    "\t\r\n",
    ":",
    "::",
    "@sha256:" + "0" * 64,
    "🦙" * 50,
    "x" * 100_000,
)

# -- strategies -----------------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
model_names = st.sampled_from(PATHLIKE_NAMES) | st.text(max_size=60) | json_values


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any]) -> bytes:
    """A valid body with fields dropped, retyped or added, and a hostile model name."""
    body = dict(template)
    for key in list(body):
        action = draw(st.sampled_from(["keep", "keep", "drop", "retype"]))
        if action == "drop":
            del body[key]
        elif action == "retype":
            body[key] = draw(json_values)
    if draw(st.booleans()):
        body["model"] = draw(model_names)
    extra = draw(st.dictionaries(st.sampled_from(_EXTRA_FIELDS), json_values, max_size=3))
    body.update(extra)
    return json.dumps(body).encode()


_EXTRA_FIELDS = (
    "stream",
    "options",
    "keep_alive",
    "format",
    "stream_options",
    "max_tokens",
    "dimensions",
    "encoding_format",
    "think",
    "raw",
    "name",
    "tools",
    "messages",
    "prompt",
    "input",
)


@st.composite
def malformed(draw: st.DrawFn, template: dict[str, Any]) -> bytes:
    """Valid JSON, cut short or with garbage spliced in (invalid UTF-8 included)."""
    raw = json.dumps(template).encode()
    cut = draw(st.integers(min_value=0, max_value=len(raw)))
    junk = draw(st.binary(max_size=8) | st.sampled_from([b"\xff", b"\xc3\x28", b"\xf0\x28\x8c"]))
    return raw[:cut] + junk + (raw[cut:] if draw(st.booleans()) else b"")


def bodies(template: dict[str, Any]) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.one_of(
        json_values.map(lambda v: ("json", json.dumps(v).encode())),
        mutated(template).map(lambda b: ("mutated", b)),
        malformed(template).map(lambda b: ("malformed", b)),
        st.binary(max_size=300).map(lambda b: ("bytes", b)),
        st.text(max_size=300).map(lambda t: ("text", t.encode())),
    )


# -- checks ---------------------------------------------------------------------------------------


def _openai_shaped(path: str) -> bool:
    path = unquote(path.split("?", 1)[0])
    return path == "/v1" or path.startswith("/v1/")


def _anthropic_shaped(path: str) -> bool:
    return unquote(path.split("?", 1)[0]) == "/v1/messages"


def check_answer(path: str, response: RawResponse, *, protocol_ok: bool = False) -> str:
    """The property every answer must hold; returns a short outcome label."""
    text = response.body.decode(errors="replace")
    assert response.status < 500, f"{path}: HTTP {response.status}: {text[:300]}"
    assert "Traceback" not in text, f"{path}: a traceback was sent: {text[:300]}"
    content_type = response.headers.get("content-type", "")
    if response.status < 400:
        _check_success(path, content_type, response.body)
        return "2xx"
    assert content_type.startswith("application/json"), f"{path}: not JSON: {text[:200]}"
    if "x-request-id" not in response.headers:
        # Malformed HTTP (bad header bytes, oversized lines) is refused before any route is
        # known: a JSON error, but not in a particular API's shape.
        assert protocol_ok, f"{path}: HTTP {response.status} refused as malformed: {text[:200]}"
        assert response.status in (400, 431), response.status
        assert "error" in response.json()
        return "protocol-400"
    body = response.json()
    assert isinstance(body, dict), body
    if _anthropic_shaped(path):
        assert {"type", "error"} <= set(body) <= {"type", "error", "request_id"}, body
        assert body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert body["error"]["message"], body
    elif _openai_shaped(path):
        assert set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error, dict), f"{path}: OpenAI error shape expected: {body}"
        assert isinstance(error.get("message"), str), body
        assert error["message"], body
        assert {"message", "type"} <= set(error), body
    else:
        assert set(body) == {"error"}, body
        assert isinstance(body["error"], str), f"{path}: Ollama error shape expected: {body}"
        assert body["error"], body
    return str(response.status)


def _check_success(path: str, content_type: str, raw: bytes) -> None:
    """A 2xx body is well formed; a stream ends properly or with an in-band error."""
    if content_type.startswith("text/event-stream"):
        events = sse_data(raw)
        assert events, f"{path}: empty SSE stream"
        last = events[-1]
        if path in LAST_EVENTS:
            kind = json.loads(last).get("type")
            assert kind in (LAST_EVENTS[path], "error"), f"{path}: stream end {last[:200]!r}"
        else:
            assert last == "[DONE]" or "error" in json.loads(last), f"{path}: stream end {last!r}"
    elif content_type.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        assert lines, f"{path}: empty NDJSON stream"
        assert lines[-1].get("done") is True or "error" in lines[-1], lines[-1]
    elif content_type.startswith("application/json"):
        json.loads(raw)


def send(
    proxy: ProxyProcess, method: str, path: str, body: bytes | None = None, **kw: Any
) -> RawResponse:
    return raw_http(proxy.port, build_request(method, path, body=body, **kw))


@pytest.fixture(scope="module")
def sim_pid(main_proxy: ProxyProcess) -> int:
    main_proxy.wait_ready()
    sim = main_proxy.wait_ollama()
    return int(sim.pid)


@pytest.fixture
def healthy(main_proxy: ProxyProcess, sim_pid: int) -> Iterator[ProxyProcess]:
    """Yields the shared proxy; afterwards it must still answer normally (once per batch)."""
    yield main_proxy
    assert_healthy(main_proxy, sim_pid)


def assert_healthy(proxy: ProxyProcess, sim_pid: int) -> None:
    proxy.check_running()
    sim = proxy.ollama()
    assert sim is not None, "Ollama still runs"
    assert sim.pid == sim_pid, "Ollama was not restarted (it never crashed)"
    assert http_json(f"{proxy.url}/healthz")[0] == 200
    status, body = proxy.get("/readyz")
    assert status == 200, body
    messages = user_messages("are you still there?")
    status, answer = http_json(
        f"{proxy.url}/v1/chat/completions",
        method="POST",
        body={"model": CHAT, "messages": messages},
        headers=proxy.headers,
    )
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"] == expected_text(CHAT, messages, 12)


# -- property-based: every model route ------------------------------------------------------------


@pytest.mark.parametrize("path", list(MODEL_ROUTES))
@HOSTILE
@given(data=st.data())
def test_model_routes_answer_hostile_bodies_in_their_error_shape(
    healthy: ProxyProcess, path: str, data: st.DataObject
) -> None:
    kind, body = data.draw(bodies(MODEL_ROUTES[path]), label="body")
    response = send(healthy, "POST", path, body)
    outcome = check_answer(path, response)
    TALLY.hostile(f"bodies ({kind})", generated=True)
    assert outcome


@HOSTILE
@given(
    name=model_names.filter(lambda n: isinstance(n, str) and "\x00" not in n),
    route=st.sampled_from(["/v1/models/{}", "/v1/models/{}?x=1", "/api/show"]),
)
def test_model_names_in_paths_and_show(healthy: ProxyProcess, name: str, route: str) -> None:
    if route == "/api/show":
        path = route
        response = send(healthy, "POST", path, json.dumps({"name": name}).encode())
    else:
        path = route.format(quote(name[:4000], safe="/%:@") or "x")
        response = send(healthy, "GET", path)
    check_answer(path, response)
    TALLY.hostile("model-names", generated=True)


@HOSTILE
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    prefix=st.sampled_from(["/", "/api/", "/v1/", "/v1", "/%76%31/", "/api/../v1/", "//"]),
    tail=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"),
        max_size=30,
    ),
    query=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
        max_size=30,
    ),
)
def test_unknown_paths_and_methods(
    healthy: ProxyProcess, method: str, prefix: str, tail: str, query: str
) -> None:
    path = prefix + quote(tail, safe="/%") + (f"?{quote(query, safe='=&%')}" if query else "")
    try:
        response = send(healthy, method, path, b"{}" if method in ("POST", "PUT") else None)
    except OSError:  # a HEAD answer has no body to read; the server is checked afterwards
        assert method == "HEAD"
        return
    if response.status < 400 or method == "HEAD":
        assert response.status < 500
    else:
        check_answer(path, response, protocol_ok=True)
    TALLY.hostile("paths", generated=True)


@HOSTILE
@given(
    path=st.sampled_from(GET_ROUTES),
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE"]),
    query=st.text(max_size=40).map(lambda q: quote(q, safe="=&")),
    body=st.none() | st.binary(max_size=300),
)
def test_fixed_routes_with_junk_queries_methods_and_bodies(
    healthy: ProxyProcess, path: str, method: str, query: str, body: bytes | None
) -> None:
    target = f"{path}?{query}" if query else path
    response = send(healthy, method, target, body)
    if method == "HEAD":
        assert response.status in (200, 405), response.status
    elif method == "GET":
        assert response.status == 200, (target, response.status, response.body[:200])
        check_answer(path, response)
    else:
        assert response.status == 405, (target, method, response.status)
        check_answer(path, response)
        assert "GET" in response.headers.get("allow", ""), response.headers
    TALLY.hostile("fixed routes", generated=True)


@HOSTILE
@given(
    name=st.sampled_from(
        ["X-Request-ID", "Authorization", "X-Api-Key", "Content-Type", "Accept", "X-Forwarded-For"]
    ),
    value=st.binary(max_size=200)
    | st.sampled_from(
        [
            b"abc\r\nX-Injected: 1",
            b"abc\nX-Injected: 1",
            b"abc\rX-Injected: 1",
            b"\x00",
            b"\xff\xfe",
            b"Bearer " + b"x" * 9000,
            b"a" * 129,
            b"ok-id-123",
        ]
    ),
    path=st.sampled_from(["/v1/models", "/api/tags", "/api/version"]),
)
def test_header_injection_and_junk_headers(
    healthy: ProxyProcess, name: str, value: bytes, path: str
) -> None:
    headers: list[tuple[str | bytes, str | bytes]] = [(name, value)]
    request = build_request("GET", path, headers=headers, auth=name != "Authorization")
    try:
        response = raw_http(healthy.port, request)
    except (OSError, http.client.HTTPException):  # it may close a connection it cannot parse
        TALLY.hostile("headers", generated=True)
        return
    outcome = check_answer(path, response, protocol_ok=True)
    assert "x-injected" not in response.headers, "a request header leaked into the response"
    request_id = response.headers.get("x-request-id")
    if outcome != "protocol-400":
        assert request_id is not None, response.headers
        assert request_id.isascii(), request_id
        assert request_id.isprintable(), request_id
        if name == "X-Request-ID" and re.fullmatch(rb"[\x21-\x7e]{1,128}", value):
            assert request_id == value.decode(), "a valid request id is echoed"
    if name == "Authorization":
        assert outcome in ("protocol-400", "401"), "a junk Authorization header is never let in"
    TALLY.hostile("headers", generated=True)


@HOSTILE
@given(
    path=st.sampled_from(MANAGEMENT_ROUTES),
    method=st.sampled_from(["GET", "POST", "DELETE", "HEAD", "PUT"]),
    body=st.binary(max_size=200),
)
def test_management_routes_refuse_the_api_key(
    healthy: ProxyProcess, path: str, method: str, body: bytes
) -> None:
    if method == "HEAD":
        request = build_request(method, path)
        with socket.create_connection(("127.0.0.1", healthy.port), timeout=5) as sock:
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 403"), "HEAD is refused too"
    else:
        response = send(healthy, method, path, body)
        assert response.status == 403, (path, method, response.status, response.body[:200])
        check_answer(path, response)
    TALLY.hostile("management", generated=True)


# -- explicit edge cases --------------------------------------------------------------------------

_DEEP_BODIES = {
    "lists": b"[" * DEEP + b"]" * DEEP,
    "objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "in-messages": b'{"model":"'
    + CHAT.encode()
    + b'","messages":'
    + b"[" * DEEP
    + b"]" * DEEP
    + b"}",
}


@pytest.mark.parametrize("shape", list(_DEEP_BODIES))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/embed"])
def test_deep_nesting_is_a_400_not_a_500(
    main_proxy: ProxyProcess, sim_pid: int, path: str, shape: str
) -> None:
    TALLY.hostile("deep-nesting")
    response = send(main_proxy, "POST", path, _DEEP_BODIES[shape])
    try:
        check_answer(path, response)
    finally:
        assert_healthy(main_proxy, sim_pid)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", b'{"model":"smollm2:135m","prompt":"\\ud800","stream":false}'),
        (
            "/v1/chat/completions",
            b'{"model":"smollm2:135m","messages":[{"role":"user","content":"\\udfff"}]}',
        ),
        ("/api/embed", b'{"model":"all-minilm:l6-v2","input":"ok","\\ud83d":1}'),
        ("/v1/completions", b'{"model":"gpt-4o-mini","prompt":"hi","\xed\xa0\x80":false}'),
    ],
)
def test_lone_surrogate_escapes_are_not_a_500(
    main_proxy: ProxyProcess, sim_pid: int, path: str, body: bytes
) -> None:
    TALLY.hostile("surrogates")
    response = send(main_proxy, "POST", path, body)
    try:
        check_answer(path, response)
    finally:
        assert_healthy(main_proxy, sim_pid)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/generate", "/api/embed"])
def test_oversized_bodies_are_413_in_the_api_shape(main_proxy: ProxyProcess, path: str) -> None:
    big = json.dumps({"model": CHAT, "prompt": "x" * (MAIN_MAX_BODY + 10)}).encode()
    declared = send(main_proxy, "POST", path, big)
    assert declared.status == 413, declared.body[:200]
    check_answer(path, declared)
    # Chunked: no Content-Length to refuse up front; the limit holds while reading.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    chunks = b"".join(
        f"{len(big[i : i + 65536]):x}\r\n".encode() + big[i : i + 65536] + b"\r\n"
        for i in range(0, len(big), 65536)
    )
    chunked = raw_http(main_proxy.port, head + chunks + b"0\r\n\r\n")
    assert chunked.status == 413, chunked.body[:200]
    check_answer(path, chunked)
    # Just under the limit is not refused for its size.
    fits = json.dumps({"model": CHAT, "prompt": "y" * (MAIN_MAX_BODY - 200), "stream": False})
    response = send(main_proxy, "POST", "/api/generate", fits.encode())
    assert response.status == 200, response.body[:200]
    TALLY.hostile("oversized", 3)


def test_huge_strings_and_many_headers(main_proxy: ProxyProcess, sim_pid: int) -> None:
    huge = "🦙" * (MAIN_MAX_BODY // 16)  # 4 UTF-8 bytes each; the JSON body still fits
    cases = [
        ("/v1/chat/completions", {"model": huge, "messages": user_messages("x")}),
        ("/api/chat", {"model": CHAT, "messages": user_messages(huge), "stream": False}),
        ("/v1/embeddings", {"model": EMBED, "input": [huge]}),
        ("/api/show", {"name": huge}),
    ]
    for path, body in cases:
        data = json.dumps(body, ensure_ascii=False).encode()
        assert len(data) < MAIN_MAX_BODY
        check_answer(path, send(main_proxy, "POST", path, data))
    many = [(f"X-Junk-{i}", "v" * 100) for i in range(300)]
    check_answer("/api/tags", send(main_proxy, "GET", "/api/tags", headers=many), protocol_ok=True)
    assert_healthy(main_proxy, sim_pid)
    TALLY.hostile("huge", len(cases) + 1)


LOG_LINE_LIMIT = 16 * 1024
"""The longest log line one request may cause (bytes)."""


def test_one_request_writes_a_bounded_log_line(main_proxy: ProxyProcess) -> None:
    request_id = f"bounded-log-{time.monotonic_ns()}"
    body = json.dumps({"model": "m" * (MAIN_MAX_BODY - 1000), "messages": []}).encode()
    response = send(
        main_proxy, "POST", "/v1/chat/completions", body, headers=[("X-Request-ID", request_id)]
    )
    assert response.status == 404
    time.sleep(0.2)
    lines = [line for line in main_proxy.log_lines() if request_id in line]
    assert lines, "the request was logged"
    assert max(len(line) for line in lines) <= LOG_LINE_LIMIT, max(len(line) for line in lines)


def _slow_socket(port: int, payload: bytes, delay: float, stop_at: int | None) -> socket.socket:
    """Send ``payload`` one byte at a time (``delay`` apart) up to ``stop_at``, then hold."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    for i, byte in enumerate(payload[:stop_at]):
        sock.sendall(bytes([byte]))
        if i < 5:
            time.sleep(delay)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    finally:
        sock.close()


def test_slow_clients_are_cut_off(main_proxy: ProxyProcess, sim_pid: int) -> None:
    TALLY.hostile("slow-client", 2)
    request = build_request(
        "POST", "/api/generate", body=json.dumps({"model": CHAT, "prompt": "slow"}).encode()
    )
    header_end = request.index(b"\r\n\r\n")
    # One that trickles its headers and never finishes them; one whose body never comes.
    trickle = _slow_socket(main_proxy.port, request, 0.05, header_end - 10)
    no_body = _slow_socket(main_proxy.port, request, 0.0, header_end + 4 + 5)
    limit = MAIN_CLIENT_TIMEOUT + SLOW_CLIENT_MARGIN
    started = time.monotonic()
    results = {"headers": _closed_by_server(trickle, limit)}
    results["body"] = _closed_by_server(no_body, max(limit - (time.monotonic() - started), 0.1))
    assert_healthy(main_proxy, sim_pid)
    assert all(results.values()), f"not closed within {limit:g}s: {results}"


def test_hostile_traffic_left_no_5xx_and_no_traceback_in_the_log(
    main_proxy: ProxyProcess, sim_pid: int
) -> None:
    assert_healthy(main_proxy, sim_pid)
    events = main_proxy.events()
    statuses = [e.get("status") for e in events if e.get("event") == "request"]
    unhandled = [e for e in events if e.get("event") == "unhandled error"]
    assert not unhandled, unhandled[:3]
    fives = [
        e
        for e in events
        if e.get("event") == "request"
        and isinstance(e.get("status"), int)
        and e["status"] >= 500
        and e.get("path") not in ("/readyz",)
    ]
    assert not fives, fives[:3]
    assert statuses, "the access log recorded the hostile requests"


# -- Deployment.request, in-process against the shared proxy --------------------------------------


@pytest.fixture(scope="module")
def deployment(main_proxy: ProxyProcess) -> Iterator[Any]:
    """The real ``Deployment`` of the package, as request process 1 (no launcher)."""
    main_proxy.wait_ready()
    spec = importlib.util.spec_from_file_location(
        "reliability_deployment", PACKAGE_DIR / "deployment.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in main_proxy.env.items():
            patch.setenv(name, value)
        instance = module.Deployment(str(PACKAGE_DIR), {"process_id": 1})
    try:
        yield instance
    finally:
        instance.stop()


deployment_data = st.one_of(
    json_values.map(lambda v: ("python", v)),
    json_values.map(lambda v: ("json-text", json.dumps(v))),
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    st.text(max_size=200).map(lambda t: ("text", t)),
    mutated(MODEL_ROUTES["/v1/chat/completions"]).map(lambda b: ("mutated-chat", b.decode())),
    mutated(MODEL_ROUTES["/v1/embeddings"]).map(lambda b: ("mutated-embed", json.loads(b))),
    mutated({"model": CHAT, "prompt": "hi", "stream": True}).map(
        lambda b: ("mutated-completion", b.decode())
    ),
)


@HOSTILE
@given(item=deployment_data)
def test_deployment_request_gives_a_result_or_a_public_error(
    deployment: Any, healthy: ProxyProcess, item: tuple[str, Any]
) -> None:
    _kind, data = item
    updates: list[str] = []
    message: str | None = None
    try:
        output = deployment.request(data, {"streaming_update": updates.append})
    except PublicError as exc:
        message = exc.public_error_message
    if message is None:
        assert isinstance(output, str)
        json.loads(output)
    else:
        assert isinstance(message, str)
        assert message.strip()
        assert "Traceback" not in message
        assert "internal error" not in message, message
    TALLY.hostile("Deployment.request", generated=True)


@pytest.mark.parametrize("shape", list(_DEEP_BODIES))
def test_deployment_request_with_deep_nesting_is_a_public_error(
    deployment: Any, shape: str
) -> None:
    text = _DEEP_BODIES[shape].decode()
    for data in (text, text.encode()):
        with pytest.raises(PublicError, match="nested too deeply"):
            deployment.request(data, {})
    nested: Any = []
    for _ in range(DEEP):
        nested = [nested]
    with pytest.raises(PublicError, match="nested too deeply"):
        deployment.request({"model": CHAT, "messages": nested}, {})
    TALLY.hostile("deployment-deep-nesting", 3)


def test_deployment_request_with_a_lone_surrogate_is_a_public_error(deployment: Any) -> None:
    with pytest.raises(PublicError, match="UTF-8"):
        deployment.request('{"model": "smollm2:135m", "prompt": "\ud800"}', {})
    TALLY.hostile("deployment-surrogates", 1)


@pytest.mark.parametrize("secret", [API_KEY, ADMIN_KEY], ids=["api-key", "admin-key"])
def test_deployment_errors_never_echo_a_key(deployment: Any, secret: str) -> None:
    """UbiOps logs a request's exception with its message: a key sent as the model name (or
    in a wrong-kind request) must not come back in it."""
    for data in (
        {"model": secret, "messages": user_messages("x")},
        json.dumps({"model": f"{secret}x", "input": "x"}),
        {"model": f"ubiops-deployment/d/v/{secret}", "prompt": "x"},
    ):
        with pytest.raises(PublicError) as caught:
            deployment.request(data, {})
        assert secret not in caught.value.public_error_message
        assert secret not in str(caught.value)
        assert "[redacted]" in caught.value.public_error_message
    TALLY.hostile("deployment-secret-echo", 3)


def test_deployment_still_serves_after_the_hostile_batch(deployment: Any) -> None:
    messages = user_messages("after the storm")
    updates: list[str] = []
    output = deployment.request(
        {"model": CHAT, "messages": messages, "stream": True}, {"streaming_update": updates.append}
    )
    chunks = [json.loads(u) for u in updates]
    # The last chunk carries the usage UbiOps counts tokens by, and no choices.
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == expected_text(CHAT, messages, 12)
    assert json.loads(output) == [json.loads(u) for u in updates]
