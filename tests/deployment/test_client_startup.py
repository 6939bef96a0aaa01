"""The request processes' client while the proxy starts: ``wait_started`` waits only while
start-up is quick, and until the proxy served, a request fails at once saying why."""

from __future__ import annotations

import pytest
from aiohttp import web

import proxy.startup
from proxy.client import ProxyClient
from proxy.state import Phase
from proxy.ubiops_request import ProxyUnavailableError
from tests.deployment.conftest import CHAT, FakeProxy, make_client, posted, readiness

PULLING = {"smollm2:135m": {"kind": "chat", "state": "pulling", "progress": 0.43}}


def test_wait_started_returns_once_models_are_being_downloaded(
    fake_proxy: FakeProxy, client: ProxyClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy.startup, "DOWNLOAD_GRACE", 0.2)
    answers = iter([readiness(Phase.STARTING, False, reason="Ollama is starting")])
    pulling = readiness(Phase.PULLING, False, reason="smollm2:135m pulling 43%", models=PULLING)

    async def readyz(request: web.Request) -> web.StreamResponse:
        return await next(answers, pulling)(request)  # type: ignore[operator]

    fake_proxy.routes["GET", "/readyz"] = readyz
    assert client.wait_started() == (
        "models are being downloaded: not ready (pulling): smollm2:135m pulling 43%"
    )
    with pytest.raises(ProxyUnavailableError) as info:
        client.forward(CHAT)
    assert info.value.public_error_message == (
        "The model server is starting (pulling: smollm2:135m pulling 43%); retry in a minute "
        "(models are being downloaded)."
    )
    assert posted(fake_proxy) == [], "nothing is sent while it starts"

    async def answer(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    fake_proxy.routes["POST", "/v1/chat/completions"] = answer
    fake_proxy.routes["GET", "/readyz"] = readiness(Phase.READY, True)  # type: ignore[assignment]
    asked = len([path for _, path, _, _ in fake_proxy.seen if path == "/readyz"])
    for _ in range(3):
        assert client.forward(CHAT) == '{"ok": true}'
    readyz_calls = [path for _, path, _, _ in fake_proxy.seen if path == "/readyz"]
    assert len(readyz_calls) == asked + 1, "asked until it served once, then never again"


def test_wait_started_is_short_and_requests_then_say_what_the_proxy_waits_for(
    fake_proxy: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert proxy.startup.STARTUP_WAIT < 300, "below UbiOps' default request timeout"
    monkeypatch.setattr(proxy.startup, "STARTUP_WAIT", 0.2)
    fake_proxy.routes["GET", "/readyz"] = readiness(  # type: ignore[assignment]
        Phase.PULLING, False, reason="all-minilm:l6-v2 loading"
    )
    client = make_client(fake_proxy.port, READY_TIMEOUT="100000")
    try:
        assert client.wait_started() == (
            "not serving after 0.2 s: not ready (pulling): all-minilm:l6-v2 loading"
        )
        with pytest.raises(ProxyUnavailableError, match=r"starting \(pulling: all-minilm"):
            client.forward(CHAT)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("readiness", "message"),
    [
        (
            readiness(Phase.DEGRADED, False, gave_up=True, reason="Ollama is failed: exit 1"),
            "The model server cannot start: Ollama is failed: exit 1. See the deployment logs.",
        ),
        (
            readiness(Phase.DEGRADED, False, reason="smollm2:135m failed: not found"),
            "The model server does not serve (degraded: smollm2:135m failed: not found). See the "
            "deployment logs.",
        ),
    ],
)
def test_a_proxy_that_will_not_serve_says_so(
    fake_proxy: FakeProxy, client: ProxyClient, readiness: object, message: str
) -> None:
    fake_proxy.routes["GET", "/readyz"] = readiness  # type: ignore[assignment]

    with pytest.raises(ProxyUnavailableError) as info:
        client.forward(CHAT)
    assert info.value.public_error_message == message


def test_wait_started_fails_when_ollama_failed_for_good(
    fake_proxy: FakeProxy, client: ProxyClient
) -> None:
    fake_proxy.routes["GET", "/readyz"] = readiness(  # type: ignore[assignment]
        Phase.DEGRADED, False, gave_up=True, reason="Ollama is failed: exited with status 1"
    )
    with pytest.raises(ProxyUnavailableError, match="cannot start: Ollama is failed: exited"):
        client.wait_started()


def test_a_launcher_that_gave_up_fails_requests_with_its_reason(
    fake_proxy: FakeProxy, client: ProxyClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher_failure: list[str] = []

    def check() -> None:  # what process 0 passes: its launcher's check
        if launcher_failure:
            raise RuntimeError(launcher_failure[0])

    fake_proxy.routes["GET", "/readyz"] = readiness(Phase.STARTING, False)  # type: ignore[assignment]
    monkeypatch.setattr(proxy.startup, "STARTUP_WAIT", 0.1)
    client.wait_started(check=check)
    launcher_failure.append("the proxy exited with status 2 (a configuration error)")
    with pytest.raises(ProxyUnavailableError) as info:
        client.forward(CHAT)
    assert info.value.public_error_message == (
        "The model server cannot start: the proxy exited with status 2 (a configuration error). "
        "See the deployment logs."
    )
