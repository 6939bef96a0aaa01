"""One corpus, two paths, one verdict: a UbiOps request and the same body sent to the proxy's port
are accepted or refused alike, and a refusal says the same words.

The UbiOps path is the request processes' real client (``proxy.client.ProxyClient``, what
``deployment.py`` calls); the port path is plain HTTP to the endpoint a user of the port would
call. The proxy is the only judge of both.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from proxy_support import API_KEY, CHAT, CHAT_ALIAS, EMBED, MESSAGES, Proxy

from proxy.client import ProxyClient
from proxy.ubiops_request import ENDPOINT_FIELD, PublicError, route

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
RESPONSES_PATH = "/v1/responses"
MESSAGES_PATH = "/v1/messages"
TIMEOUT = aiohttp.ClientTimeout(total=30)

CORPUS: list[tuple[str, Any, str]] = [
    # good
    ("chat", {"model": CHAT, "messages": MESSAGES}, CHAT_PATH),
    ("chat through an alias", {"model": CHAT_ALIAS, "messages": MESSAGES}, CHAT_PATH),
    (
        "the UbiOps endpoint's model form",
        {"model": f"ubiops-deployment/dep/v1/{CHAT}", "messages": MESSAGES},
        CHAT_PATH,
    ),
    ("completion", {"model": CHAT, "prompt": "Once upon a time"}, COMPLETIONS_PATH),
    ("embedding of a text", {"model": EMBED, "input": "hello"}, EMBEDDINGS_PATH),
    ("embeddings of a list", {"model": EMBED, "input": ["a", "b"]}, EMBEDDINGS_PATH),
    ("a Responses request (input, a chat model)", {"model": CHAT, "input": "hi"}, RESPONSES_PATH),
    (
        "an Anthropic request, named",
        {"endpoint": MESSAGES_PATH, "model": CHAT, "max_tokens": 16, "messages": MESSAGES},
        MESSAGES_PATH,
    ),
    (
        "messages and prompt (chat wins)",
        {"model": CHAT, "messages": MESSAGES, "prompt": "x"},
        CHAT_PATH,
    ),
    # bad
    ("not JSON", "{not json", CHAT_PATH),
    ("empty text", "", CHAT_PATH),
    ("a JSON array", "[1, 2]", CHAT_PATH),
    ("a JSON string", '"hello"', CHAT_PATH),
    ("NaN", '{"model": NaN, "messages": []}', CHAT_PATH),
    ("nested too deeply", '{"messages": ' + "[" * 5000 + "]" * 5000 + "}", CHAT_PATH),
    ("no model", {"messages": MESSAGES}, CHAT_PATH),
    ("a model that is not text", {"model": 7, "messages": MESSAGES}, CHAT_PATH),
    ("an unknown model", {"model": "llama3", "messages": MESSAGES}, CHAT_PATH),
    (
        "a chat model asked for embeddings",
        {"endpoint": EMBEDDINGS_PATH, "model": CHAT, "input": "x"},
        EMBEDDINGS_PATH,
    ),
    (
        "an Anthropic request without max_tokens",
        {"endpoint": MESSAGES_PATH, "model": CHAT, "messages": MESSAGES},
        MESSAGES_PATH,
    ),
    ("an embedding model asked to chat", {"model": EMBED, "messages": MESSAGES}, CHAT_PATH),
    ("an embedding model asked to complete", {"model": EMBED, "prompt": "x"}, COMPLETIONS_PATH),
    ("messages that are not a list", {"model": CHAT, "messages": "hi"}, CHAT_PATH),
    ("a prompt that is not text", {"model": CHAT, "prompt": ["x"]}, COMPLETIONS_PATH),
    ("input that is a number", {"model": EMBED, "input": 3}, EMBEDDINGS_PATH),
    ("stream that is not a boolean", {"model": CHAT, "messages": [], "stream": "yes"}, CHAT_PATH),
    ("no input field at all", {"model": CHAT}, CHAT_PATH),
]


def _body(payload: Any) -> bytes:
    return payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()


def _port_body(payload: Any) -> bytes:
    """What a port user sends: the path names the endpoint, so no endpoint field."""
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != ENDPOINT_FIELD}
    return _body(payload)


async def _through_the_port(proxy: Proxy, path: str, body: bytes) -> tuple[bool, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(f"{proxy.url}{path}", data=body, headers=headers) as response,
    ):
        document = await response.json()
    if response.status >= 400:
        return False, document["error"]["message"]
    return True, document


def _through_ubiops(client: ProxyClient, payload: Any) -> tuple[bool, Any]:
    try:
        return True, json.loads(client.forward(payload))
    except PublicError as exc:
        return False, exc.public_error_message


_VARYING = frozenset({"id", "created", "created_at", "completed_at"})


def _same_answer(ours: Any, theirs: Any) -> None:
    """Equal but for what differs between any two answers (ids and times, at any depth)."""
    assert _steady(ours) == _steady(theirs)


def _steady(document: Any) -> Any:
    if isinstance(document, dict):
        return {k: _steady(v) for k, v in document.items() if k not in _VARYING}
    if isinstance(document, list):
        return [_steady(item) for item in document]
    return document


@pytest.mark.parametrize(("case", "payload", "path"), CORPUS, ids=[c[0] for c in CORPUS])
async def test_a_payload_gets_the_same_verdict_and_words_through_ubiops_and_the_port(
    proxy: Proxy, case: str, payload: Any, path: str
) -> None:
    routed = route(_body(payload), proxy.settings.catalog)
    assert routed.endpoint.path == path, "the endpoint a port user would call"
    port = int(proxy.url.rsplit(":", 1)[1])
    client = ProxyClient(replace(proxy.settings, proxy_port=port))
    try:
        ubiops = await asyncio.to_thread(_through_ubiops, client, payload)
    finally:
        await asyncio.to_thread(client.close)
    direct = await _through_the_port(proxy, path, _port_body(payload))
    assert ubiops[0] == direct[0], (case, ubiops, direct)
    if direct[0]:
        _same_answer(ubiops[1], direct[1])
    else:
        assert ubiops[1] == direct[1], case
        assert direct[1], "a refusal says why"
