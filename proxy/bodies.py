"""Request bodies: read them, parse them as Ollama will, and police what they may ask for.

The proxy decides on a body (which model, which kind, what limits) and Ollama then decodes the
same bytes with Go's ``encoding/json``, which matches struct keys case-insensitively and lets
the last duplicate win. So that both see one request, a body whose keys repeat in one object,
or whose top-level keys collide case-insensitively, is refused, and every field the proxy
polices is given its canonical spelling before it is read or forwarded.

The operator's policy (:func:`police`): a user key may not set ``keep_alive`` (it loads and
unloads models for everyone) nor Ollama's server-level load options, and may raise ``num_ctx``
only up to ``PROXY_MAX_NUM_CTX``; the admin key may do all of it. Embedding requests are capped
at ``PROXY_MAX_EMBED_INPUTS`` inputs of at most ``PROXY_MAX_EMBED_INPUT_CHARS`` each, so that a
small request cannot ask for an answer of hundreds of megabytes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from proxy.appkeys import SETTINGS
from proxy.catalog import ModelKind
from proxy.config import Settings
from proxy.endpoints import Endpoint, Field
from proxy.errors import BadRequestError, PayloadTooLargeError, RequestTimeoutError

__all__ = ["check_fields", "model_name", "police", "read_json_object", "serialise"]

CANONICAL_KEYS = frozenset(
    {"model", "name", "stream", "stream_options", "keep_alive", "options"}
    | {"messages", "prompt", "input", "encoding_format", "dimensions", "max_tokens"}
)
"""Top-level fields the proxy reads or polices; a differently cased spelling is renamed."""

RESERVED_OPTIONS = frozenset(
    {"num_gpu", "main_gpu", "use_mlock", "use_mmap", "num_thread", "numa", "num_batch"}
    | {"low_vram", "vocab_only", "f16_kv", "logits_all"}
)
"""Ollama options that change how a model is loaded for everyone: admin key only."""

_JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    int: "a number",
    float: "a number",
    type(None): "null",
}


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, parsed strictly (see the module doc).

    Raises:
        RequestTimeoutError: the body did not arrive within ``PROXY_CLIENT_TIMEOUT``.
        BadRequestError: empty, undecodable, not UTF-8, invalid JSON, not an object, or keys
            that repeat or collide.
        aiohttp.web.HTTPRequestEntityTooLarge: over ``client_max_size`` (mapped to 413).
    """
    try:
        async with asyncio.timeout(request.app[SETTINGS].proxy_client_timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeoutError(
            "the request body did not arrive in time; send it whole and promptly"
        ) from None
    except web.RequestPayloadError:
        encoding = request.headers.get("Content-Encoding", "none")
        raise BadRequestError(
            f"the request body cannot be read: its Content-Encoding ({encoding}) does not decode; "
            "send it uncompressed, or as gzip or deflate"
        ) from None
    return parse_object(raw)


def parse_object(raw: bytes) -> dict[str, Any]:
    """Parse a body that must be one JSON object with unique, canonically spelled keys.

    Raises:
        BadRequestError: see :func:`read_json_object`.
    """
    if not raw.strip():
        raise BadRequestError("the request body is empty; send a JSON object")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"the request body is not valid UTF-8 (at byte {exc.start}); send UTF-8 JSON"
        ) from None
    try:
        body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique)
    except ValueError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequestError(f"the request body must be a JSON object, not {_type_name(body)}")
    _canonicalise(body)
    return body


def model_name(body: dict[str, Any], fields: tuple[str, ...], names: tuple[str, ...]) -> str:
    """The model a body names, from the first of ``fields`` that carries one.

    Raises:
        BadRequestError: no model, or one that is not a string.
    """
    for name in fields:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequestError(
                f"`{name}` must be a string naming a model, not {_type_name(value)}", param=name
            )
        if value.strip():
            return value
    served = ", ".join(names) or "none are configured"
    raise BadRequestError(f"`model` is missing: name one of the models: {served}", param="model")


def check_fields(body: dict[str, Any], fields: tuple[Field, ...]) -> None:
    """Check the fields an endpoint relies on: present when required, of an allowed type.

    Raises:
        BadRequestError: naming the field.
    """
    for field in fields:
        value = body.get(field.name)
        if value is None:
            if field.required:
                raise BadRequestError(f"`{field.name}` is required", param=field.name)
            continue
        types = field.types
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            expected = " or ".join(dict.fromkeys(_JSON_TYPE_NAMES[t] for t in types))
            raise BadRequestError(
                f"`{field.name}` must be {expected}, not {_type_name(value)}", param=field.name
            )


def police(body: dict[str, Any], endpoint: Endpoint, settings: Settings, *, admin: bool) -> None:
    """Apply the operator's policy and the embedding caps to a model route's body.

    Raises:
        BadRequestError: a setting the key may not change, or too many embedding inputs.
        PayloadTooLargeError: an embedding input over the length cap.
    """
    if endpoint.kind is ModelKind.EMBEDDING:
        _cap_inputs(body, settings)
    if admin:
        return
    if "keep_alive" in body:
        raise BadRequestError(
            "`keep_alive` is set by the operator for every model (OLLAMA_KEEP_ALIVE); remove it, "
            "or send the request with the admin key",
            param="keep_alive",
        )
    options = body.get("options")
    if not isinstance(options, dict):
        return
    reserved = sorted(RESERVED_OPTIONS.intersection(options))
    if reserved:
        raise BadRequestError(
            f"`options.{reserved[0]}` changes how the model is loaded for everyone; only the "
            "admin key may set it",
            param=f"options.{reserved[0]}",
        )
    num_ctx = options.get("num_ctx")
    if num_ctx is not None and not (
        isinstance(num_ctx, int | float)
        and not isinstance(num_ctx, bool)
        and 0 < num_ctx <= settings.proxy_max_num_ctx
    ):
        raise BadRequestError(
            f"`options.num_ctx` may be at most {settings.proxy_max_num_ctx} here "
            "(PROXY_MAX_NUM_CTX)",
            param="options.num_ctx",
        )


def serialise(body: dict[str, Any]) -> bytes:
    """The body as compact UTF-8 JSON (a lone surrogate stays an escape)."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode()


def _cap_inputs(body: dict[str, Any], settings: Settings) -> None:
    field = "input" if "input" in body else "prompt"
    value = body.get(field)
    items = value if isinstance(value, list) else [value]
    if len(items) > settings.proxy_max_embed_inputs:
        raise BadRequestError(
            f"`{field}` holds {len(items)} inputs; at most {settings.proxy_max_embed_inputs} "
            "per request here (PROXY_MAX_EMBED_INPUTS): split it into several requests",
            param=field,
        )
    limit = settings.proxy_max_embed_input_chars
    for index, item in enumerate(items):
        if isinstance(item, str | list) and len(item) > limit:
            where = f"`{field}`" if items is not value else f"`{field}[{index}]`"
            raise PayloadTooLargeError(
                f"{where} is {len(item)} long; each input may be at most {limit} characters "
                "(or tokens) here (PROXY_MAX_EMBED_INPUT_CHARS)",
                param=field,
            )


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequestError(f"the key {key!r} appears twice in one object; send it once")
            seen.add(key)
    return obj


_SPELLING = {key.casefold(): key for key in CANONICAL_KEYS}


def _canonicalise(body: dict[str, Any]) -> None:
    """Refuse top-level keys that differ only in case; give the policed ones their spelling.

    (Only the top level: Ollama decodes it into structs, case-insensitively; ``options`` and
    the maps inside messages and tools it matches exactly, as the proxy does.)
    """
    folded: dict[str, str] = {}
    for key in list(body):
        fold = key.casefold()
        if fold in folded:
            raise BadRequestError(
                f"the keys `{folded[fold]}` and `{key}` differ only in case and Ollama would read "
                "them as one; send one of them"
            )
        folded[fold] = key
        proper = _SPELLING.get(fold)
        if proper is not None and proper != key:
            body[proper] = body.pop(key)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
