"""What an attacker-minded review found, each as a class of attack, against real proxies:
clients that stop reading, keys smuggled past the catalog, answers amplified from small
requests, request options that belong to the operator, defaults stricter than Ollama, side routes
without bounds, malformed HTTP in the logs, undecodable bodies, secrets in escaped forms, and
what the proxy tells strangers."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from proxy.app import create_app
from proxy.catalog import Catalog
from proxy.config import LogFormat, Settings
from proxy.logs import configure_logging, get_logger
from proxy.state import InstanceState, ModelStatus, OllamaStatus
from proxy.testing.harness import free_port, http_json, serve_app
from proxy.testing.services import ProxyProcess

from .helpers import (
    ADMIN_KEY,
    API_KEY,
    CHAT,
    EMBED,
    TALLY,
    build_request,
    check_sse_chat,
    established,
    metric_value,
    raw_http,
    sse_data,
    start_proxy,
    tcp_connections,
    user_messages,
    wait_until,
)

pytestmark = pytest.mark.reliability

STALL_TIMEOUT = 1.5
"""PROXY_CLIENT_TIMEOUT of the stall proxy: how long one write may wait (seconds)."""
STALL_WITHIN = STALL_TIMEOUT * 3 + 10
"""How soon stalled clients are cut off and another served: the buffers between them and the
proxy fill first (megabytes, slowly made on a loaded machine); held forever is the failure."""
STALL_SLOTS = 2
"""PROXY_MAX_CONCURRENCY of the stall proxy: as many stalled clients as there are slots."""
LONG_STREAM = 60_000
"""SIM_NUM_TOKENS of the stall proxy: far more than the kernel's socket buffers hold."""
BIG_EMBED = 1_500
"""Inputs of the embedding request whose whole answer (~11 MB) no buffer holds."""
NUM_TOKENS = 12
"""The simulator's default SIM_NUM_TOKENS."""
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def stall_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    proxy = start_proxy(
        tmp_path_factory.mktemp("stall"),
        "stall-proxy",
        PROXY_CLIENT_TIMEOUT=str(STALL_TIMEOUT),
        PROXY_MAX_CONCURRENCY=str(STALL_SLOTS),
        SIM_NUM_TOKENS=str(LONG_STREAM),
    )
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


def _stalled_client(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    """A client that sends its request and never reads: a tiny receive buffer, soon full."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.sendall(build_request("POST", path, body=json.dumps(body).encode()))
    return sock


STALLING = {
    "openai chat stream": (
        "/v1/chat/completions",
        {"messages": user_messages("x"), "stream": True},
    ),
    "openai completion stream": ("/v1/completions", {"prompt": "x", "stream": True}),
    "ollama chat stream": ("/api/chat", {"messages": user_messages("x")}),
    "ollama generate stream": ("/api/generate", {"prompt": "x"}),
    "whole embeddings body": ("/api/embed", {"input": [f"t{i}" for i in range(BIG_EMBED)]}),
}


@pytest.mark.parametrize("route", list(STALLING))
def test_clients_that_stop_reading_are_cut_off_and_free_their_slots(
    stall_proxy: ProxyProcess, route: str
) -> None:
    path, extra = STALLING[route]
    model = EMBED if path == "/api/embed" else CHAT
    stalled = [
        _stalled_client(stall_proxy.port, path, {"model": model, **extra})
        for _ in range(STALL_SLOTS)
    ]
    # Both slots are taken by clients that read nothing; another client must still be served.
    started = time.monotonic()
    status, answer = raw_request(stall_proxy, "/api/generate", short_generate(), timeout=30)
    waited = time.monotonic() - started
    assert status == 200, answer
    assert waited < STALL_WITHIN, f"served only after {waited:.1f} s"
    # Every stalled client is cut off while it still reads nothing: its slot freed and its
    # connection closed by the proxy (what the kernel still holds for it is no longer the proxy's).
    wait_until(lambda: _in_flight(stall_proxy) == 0, STALL_WITHIN, "the slots to be free")
    ports = [sock.getsockname()[1] for sock in stalled]
    wait_until(
        lambda: not any(tcp_connections(stall_proxy.pid, port) for port in ports),
        STALL_WITHIN,
        "the proxy to close the stalled clients' connections",
    )
    for sock in stalled:
        sock.close()
    TALLY.fault(f"clients that stop reading ({route})", f"others served after {waited:.1f}s")


def short_generate() -> dict[str, Any]:
    return {"model": CHAT, "prompt": "hi", "stream": False, "options": {"num_predict": 3}}


def raw_request(
    proxy: ProxyProcess,
    path: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = headers is None
    request = build_request(
        "POST", path, body=raw, headers=list((headers or {}).items()), auth=auth
    )
    response = raw_http(proxy.port, request, timeout=timeout)
    try:
        return response.status, response.json()
    except ValueError:
        return response.status, response.body


def _in_flight(proxy: ProxyProcess) -> float:
    status, text = http_json(f"{proxy.url}/metrics", headers=proxy.headers)
    if status != 200 or not isinstance(text, str):
        return -1
    value = metric_value(text, "proxy_requests_in_flight")
    return -1 if value is None else value


# -- keys smuggled past the catalog ---------------------------------------------------------------


SMUGGLED = [
    (
        "/api/chat",
        b'{"model":"smollm2:135m","Model":"llama3","messages":[]}',
        "differ only in case",
    ),
    ("/api/chat", b'{"model":"smollm2:135m","messages":[],"model":"llama3"}', "appears twice"),
    ("/v1/embeddings", b'{"model":"all-minilm:l6-v2","MODEL":"x","input":"a"}', "differ only"),
    ("/api/generate", b'{"model":"smollm2:135m","prompt":"a","STREAM":true,"Stream":1}', "case"),
    ("/api/show", b'{"name":"smollm2:135m","NAME":"llama3"}', "differ only in case"),
]


@pytest.mark.parametrize(("path", "body", "words"), SMUGGLED)
def test_keys_that_collide_as_ollama_reads_them_are_refused(
    main_proxy: ProxyProcess, path: str, body: bytes, words: str
) -> None:
    status, document = raw_request(main_proxy, path, body)
    assert status == 400, document
    message = document["error"]["message"] if path.startswith("/v1") else document["error"]
    assert words in message
    TALLY.hostile("key smuggling")


def test_policed_keys_count_whatever_their_case(main_proxy: ProxyProcess) -> None:
    # Ollama reads "Model" and "Stream" as model and stream: so must the proxy.
    body = {"Model": CHAT, "Prompt": "hi", "Stream": False, "options": {"num_predict": 3}}
    status, document = raw_request(main_proxy, "/api/generate", body)
    assert status == 200, document
    assert document["done"] is True, "one whole answer: stream was false"
    status, document = raw_request(main_proxy, "/api/chat", {"MODEL": "llama3", "messages": []})
    assert status == 404, "the catalog judged the differently spelled model"


# -- amplification --------------------------------------------------------------------------------


def test_embedding_inputs_are_capped(main_proxy: ProxyProcess) -> None:
    many = {"model": EMBED, "input": ["x"] * 2049}
    status, document = raw_request(main_proxy, "/v1/embeddings", many)
    assert status == 400
    assert "PROXY_MAX_EMBED_INPUTS" in document["error"]["message"]
    long = {"model": EMBED, "input": ["ok", "y" * 40_000]}
    status, document = raw_request(main_proxy, "/api/embed", long)
    assert status == 413
    assert "`input[1]`" in document["error"]
    status, _ = raw_request(main_proxy, "/api/embeddings", {"model": EMBED, "prompt": "z" * 40_000})
    assert status == 413
    TALLY.hostile("amplification caps", 3)


def test_a_huge_whole_answer_is_relayed_in_bounded_memory(main_proxy: ProxyProcess) -> None:
    process = psutil.Process(main_proxy.pid)
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        body = {"model": EMBED, "input": [f"text {i}" for i in range(2000)]}
        status, document = raw_request(main_proxy, "/api/embed", body, timeout=60)
    finally:
        done.set()
        sampler.join()
    assert status == 200
    answer_size = len(json.dumps(document))
    assert answer_size > 10_000_000
    grew = max(peak) - before
    # Read whole, the answer would add at least its own size; relayed as it comes, the growth is
    # the allocator's churn (about 4 MiB on a loaded machine), whatever the size.
    assert grew < answer_size / 2, (
        f"the proxy grew {grew >> 20} MiB for a {answer_size >> 20} MiB answer"
    )


# -- operator policy ------------------------------------------------------------------------------


USER_REFUSED = [
    ("/api/generate", {"keep_alive": 0}, "keep_alive"),
    ("/api/generate", {"keep_alive": "24h"}, "keep_alive"),
    ("/api/chat", {"options": {"num_gpu": 99}}, "options.num_gpu"),
    ("/api/chat", {"options": {"use_mlock": True}}, "options.use_mlock"),
    ("/api/generate", {"options": {"num_thread": 64}}, "options.num_thread"),
    ("/api/generate", {"options": {"num_ctx": 1_000_000}}, "options.num_ctx"),
    ("/api/embed", {"keep_alive": -1}, "keep_alive"),
    ("/v1/chat/completions", {"keep_alive": "1h"}, "keep_alive"),
]


def _policy_body(path: str, extra: dict[str, Any]) -> dict[str, Any]:
    if path == "/api/embed":
        return {"model": EMBED, "input": "x", **extra}
    if path == "/api/generate":
        return {**short_generate(), **extra}
    return {"model": CHAT, "messages": user_messages("x"), "stream": False, **extra}


@pytest.mark.parametrize(("path", "extra", "setting"), USER_REFUSED)
def test_a_user_key_cannot_change_the_operators_settings(
    main_proxy: ProxyProcess, path: str, extra: dict[str, Any], setting: str
) -> None:
    status, document = raw_request(main_proxy, path, _policy_body(path, extra))
    assert status == 400, document
    message = document["error"]["message"] if path.startswith("/v1") else document["error"]
    assert f"`{setting}`" in message
    status, document = raw_request(main_proxy, path, _policy_body(path, extra), headers=ADMIN)
    assert status == 200, document
    TALLY.hostile("operator policy")


def test_a_user_key_may_ask_for_a_context_within_the_cap(main_proxy: ProxyProcess) -> None:
    body = {**short_generate(), "options": {"num_predict": 3, "num_ctx": 4096}}
    status, document = raw_request(main_proxy, "/api/generate", body)
    assert status == 200, document


# -- defaults no stricter than Ollama -------------------------------------------------------------


def test_two_hundred_concurrent_streams_complete_with_default_settings(tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, "defaults-proxy", SIM_TOKEN_DELAY="0.005")
    try:
        proxy.wait_ready()
        checked = asyncio.run(_streams(proxy, 200))
    finally:
        proxy.stop()
    assert checked == 200
    TALLY.fault("200 streams with default limits", "all exact and in order")


async def _streams(proxy: ProxyProcess, count: int) -> int:
    async def one(session: aiohttp.ClientSession, i: int) -> int:
        messages = user_messages(f"stream {i}")
        body = {"model": CHAT, "messages": messages, "stream": True}
        async with session.post(f"{proxy.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
            raw = await response.read()
        check_sse_chat(sse_data(raw), messages, NUM_TOKENS)
        return 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=AUTH, timeout=timeout) as session:
        return sum(await asyncio.gather(*(one(session, i) for i in range(count))))


# -- side routes ----------------------------------------------------------------------------------


def test_side_routes_are_bounded(main_proxy: ProxyProcess) -> None:
    ollama_port = main_proxy.ollama_port
    most = [0]
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            open_now = len(established(tcp_connections(main_proxy.pid, ollama_port)))
            most[0] = max(most[0], open_now)
            time.sleep(0.002)

    async def burst() -> list[int]:
        async with aiohttp.ClientSession(headers=AUTH) as session:

            async def show(i: int) -> int:
                path = ("/api/show", "/api/ps", "/api/version", "/api/tags")[i % 4]
                if path == "/api/show":
                    call = session.post(f"{main_proxy.url}{path}", json={"model": CHAT})
                else:
                    call = session.get(f"{main_proxy.url}{path}")
                async with call as response:
                    await response.read()
                    return response.status

            return await asyncio.gather(*(show(i) for i in range(300)))

    counter = threading.Thread(target=count)
    counter.start()
    try:
        statuses = asyncio.run(burst())
    finally:
        done.set()
        counter.join()
    assert set(statuses) == {200}
    # At most the metadata slots, plus what the main proxy's other traffic may hold meanwhile.
    assert most[0] <= 8 + 4, f"{most[0]} connections to Ollama at once"
    TALLY.hostile("side-route burst", 300)


# -- malformed HTTP, undecodable bodies -----------------------------------------------------------


MALFORMED = [
    b"NOT-HTTP\r\n\r\n",
    b"GET /api/tags HTTP/1.1\r\nHost: x\r\nHeaderWithoutColon\r\n\r\n",
    b"GET /api/t\x00ags HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /api/tags HTTP/1.1\r\nHost: x\r\n" + b"X-H: 1\r\n" * 200 + b"\r\n",
]


def test_malformed_http_gets_json_and_leaves_one_json_log_event(main_proxy: ProxyProcess) -> None:
    before = len(main_proxy.log_lines())
    for raw in MALFORMED:
        with socket.create_connection(("127.0.0.1", main_proxy.port), timeout=5) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1."), answer[:100]
        assert b" 400 " in head.split(b"\r\n")[0] or b" 431 " in head.split(b"\r\n")[0]
        assert b"aiohttp" not in head
        assert b"Python" not in head
        assert "error" in json.loads(body)
    lines = main_proxy.log_lines()[before:]
    assert lines, "the malformed requests were logged"
    for line in lines:
        json.loads(line)  # every line one JSON event, tracebacks included
    TALLY.hostile("malformed HTTP", len(MALFORMED))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_an_undecodable_body_is_a_400_in_the_apis_shape(
    main_proxy: ProxyProcess, path: str, encoding: str
) -> None:
    request = build_request(
        "POST", path, body=b"this is not compressed", headers=[("Content-Encoding", encoding)]
    )
    response = raw_http(main_proxy.port, request)
    assert response.status == 400, response.body
    error = response.json()["error"]
    # aiohttp refuses an encoding it does not support (br) before the route is known.
    message = error["message"] if isinstance(error, dict) else error
    assert "Content-Encoding" in message
    if encoding != "br":
        assert isinstance(error, dict) == path.startswith("/v1"), "the API's own shape"
    chat = {"model": CHAT, "messages": user_messages("hi"), "stream": False}
    good = build_request(
        "POST",
        path,
        body=gzip.compress(json.dumps(chat).encode()),
        headers=[("Content-Encoding", "gzip")],
    )
    assert raw_http(main_proxy.port, good).status == 200
    TALLY.hostile("content encodings")


# -- secrets, internals and what strangers learn ---------------------------------------------------


ODD_KEY = 'Rel\\Key"with%odd/chars-' + "0123456789abcDEF"
"""A key with characters JSON, repr and URLs escape, in mixed case."""


def test_a_key_with_escaped_characters_is_masked_in_every_form(tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, "odd-key-proxy", PROXY_API_KEY=ODD_KEY)
    headers = {"Authorization": f"Bearer {ODD_KEY}"}
    try:
        proxy.wait_ready()
        # The key as a model name (in messages, reprs and the access log) and in a URL path.
        for body in ({"model": ODD_KEY, "messages": []}, {"model": CHAT, "input": ODD_KEY}):
            raw_request(proxy, "/v1/chat/completions", body, headers=headers)
        quoted = urllib.parse.quote(ODD_KEY, safe="")
        raw_http(proxy.port, build_request("GET", f"/v1/models/{quoted}", auth=False))
        # And inside malformed requests, which aiohttp quotes as a bytes repr in its log.
        for line in (f"{ODD_KEY} /x HTTP/1.1", f"GET /x{ODD_KEY} HTTP/1.1"):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\n\r\n{line}\r\n\r\n".encode())
                while sock.recv(65536):
                    pass
    finally:
        proxy.stop()
    text = proxy.log_text()
    forms = {
        ODD_KEY,
        json.dumps(ODD_KEY)[1:-1],
        repr(ODD_KEY)[1:-1],
        repr(ODD_KEY.encode())[2:-1],
        urllib.parse.quote(ODD_KEY, safe=""),
        urllib.parse.quote_plus(ODD_KEY),
    }
    leaked = [form for form in forms if form in text]
    assert not leaked, leaked


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_every_escaped_form_of_a_key_is_masked(
    log_format: LogFormat, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a library may log about a request: the key repr-, JSON- or URL-escaped, then
    escaped again by the renderer, in either log format."""
    configure_logging(log_format, "info", secrets=[ODD_KEY])
    forms = [
        ODD_KEY,
        json.dumps(ODD_KEY)[1:-1],
        repr(ODD_KEY)[1:-1],
        repr(ODD_KEY.encode())[2:-1],
        urllib.parse.quote(ODD_KEY, safe=""),
        re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), urllib.parse.quote(ODD_KEY, safe="")),
        urllib.parse.quote_plus(ODD_KEY),
    ]
    log = get_logger("test")
    for form in forms:
        log.info("seen", detail=f"value={form}")
        logging.getLogger("aiohttp.server").error("bad request line %s", f"b'{form}'")
    err = capsys.readouterr().err
    leaked = [form for form in forms if form in err]
    assert not leaked, leaked
    assert err.count("[redacted]") == 2 * len(forms)


async def test_client_errors_do_not_name_ollamas_address() -> None:
    dead = free_port()
    catalog = Catalog.parse(CHAT, EMBED)
    settings = Settings(catalog=catalog, ollama_internal_port=dead, proxy_api_key=API_KEY)
    state = InstanceState(catalog)
    state.set_ollama(OllamaStatus.UP)
    for model in catalog:
        state.set_model(model.tag, ModelStatus.READY)
    async with (
        serve_app(create_app(settings, state)) as url,
        aiohttp.ClientSession(headers=AUTH) as session,
    ):
        for path, body in (
            ("/api/chat", {"model": CHAT, "messages": []}),
            ("/v1/embeddings", {"model": EMBED, "input": "x"}),
        ):
            async with session.post(url + path, json=body) as response:
                text = await response.text()
                assert response.status == 503
                assert str(dead) not in text, text
                assert "127.0.0.1" not in text, text
                assert response.headers["Server"] == "ollama-proxy"


def test_readyz_tells_strangers_only_whether_it_serves(main_proxy: ProxyProcess) -> None:
    status, anonymous = http_json(f"{main_proxy.url}/readyz")
    assert status == 200
    assert anonymous == {"status": "ready", "ready": True, "gave_up": False}
    response = raw_http(main_proxy.port, build_request("GET", "/readyz"))
    assert set(response.json()) >= {"status", "ready", "reason", "ollama", "models"}
