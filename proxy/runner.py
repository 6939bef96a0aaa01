"""The aiohttp runner the proxy serves with: every answer in JSON, no software banner.

aiohttp answers a request it cannot parse (a bad request line, a header without a colon, a NUL
in the path, headers too large or too many) itself, before any application code runs, with a
text/plain body, and names itself and Python's version in a ``Server`` header on every answer.
:class:`ProxyRunner` keeps its behaviour (400 and a closed connection; the error logged, which
:mod:`proxy.logs` renders as one JSON event) but answers in the API's JSON error shape and with
a ``Server`` header that says only what this is. aiohttp has no public hook for those answers,
so its connection handler is specialised here, in one place.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy.endpoints import Api, api_of
from proxy.errors import error_body

__all__ = ["SERVER_NAME", "ProxyRunner"]

SERVER_NAME = "ollama-proxy"
"""The ``Server`` header of every answer: no versions to fingerprint."""


class ProxyRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer malformed requests in JSON (see the module)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server


async def server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` callback: the neutral ``Server`` header."""
    response.headers["Server"] = SERVER_NAME


class _JsonErrorServer(web.Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _JsonErrorHandler
        return handler


class _JsonErrorHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        try:
            api = api_of(request.path)
        except Exception:  # a request line too broken to have a path
            api = Api.OLLAMA
        text = (message or "").strip().splitlines()[0].rstrip(": ") if message else ""
        if "content-encoding" in text.lower():  # not aiohttp's advice on what to install
            text = "its Content-Encoding is not supported; send it uncompressed, gzip or deflate"
        reason = text or ("internal error" if status >= 500 else "malformed HTTP request")
        body: dict[str, Any] = error_body(
            api, f"the request could not be read: {reason}", openai_type="invalid_request_error"
        )
        json_response = web.Response(
            status=response.status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers={"Server": SERVER_NAME},
        )
        json_response.force_close()
        return json_response
