"""Who is calling, and what they may use: keys with names and scopes, without a database.

Besides ``PROXY_API_KEY`` (named ``default``, every model and API) and ``PROXY_ADMIN_KEY``
(named ``admin``, which may also manage models and override the operator's request policy), an
operator may define keys in a JSON or TOML document (``PROXY_KEYS``, or a file named by
``PROXY_KEYS_FILE``: both fit UbiOps secrets)::

    [[keys]]
    name = "team-a"                 # labels metrics and the access log; never the key
    sha256 = "9f86d0...0a08"        # or key = "..." (then it is masked in logs)
    models = ["smollm2*", "all-minilm:l6-v2"]   # names or globs (default: all)
    apis = ["openai", "anthropic"]  # of openai, anthropic, ollama (default: all)
    concurrency = 4                 # requests in flight at once, all models
    requests_per_minute = 120
    tokens_per_minute = 200000
    weight = 2                      # turns in the queues, against other keys

A presented key is hashed and compared with every stored hash in constant time, so only hashes
need to be stored and timing says nothing about which key matched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.catalog import Model

__all__ = ["ANONYMOUS", "KeyRing", "KeySpec", "key_spec", "parse_keys"]

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_APIS = ("openai", "anthropic", "ollama")
_FIELDS = frozenset(
    {"name", "key", "sha256", "models", "apis", "concurrency", "weight"}
    | {"requests_per_minute", "tokens_per_minute"}
)


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key: its name, its hash, and what it may do."""

    name: str
    sha256: str
    secret: str | None = None
    admin: bool = False
    models: tuple[str, ...] | None = None
    apis: frozenset[str] | None = None
    concurrency: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    weight: int = 1

    def allows_model(self, model: Model, names: Iterable[str]) -> bool:
        """Whether the key may use ``model``, known by ``names`` (its tag, name and aliases)."""
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.models for name in names)

    def allows_api(self, api: str) -> bool:
        """Whether the key may use the API named ``api`` (``openai``, ``anthropic``, ``ollama``)."""
        return self.apis is None or api in self.apis

    def scope(self) -> str:
        """What the key may use, for a refusal's message."""
        models = ", ".join(self.models) if self.models is not None else "every model"
        apis = ", ".join(sorted(self.apis)) if self.apis is not None else "every API"
        return f"{models} through {apis}"


ANONYMOUS = KeySpec(name="local", sha256="")
"""The caller when no key is configured (the proxy then listens on loopback only)."""


def key_spec(name: str, key: str, *, admin: bool = False) -> KeySpec:
    """A key with every right, stored by its hash (``PROXY_API_KEY``, ``PROXY_ADMIN_KEY``)."""
    return KeySpec(name=name, sha256=_digest(key), secret=key, admin=admin)


def parse_keys(text: str) -> tuple[KeySpec, ...]:
    """The keys of a ``PROXY_KEYS`` document (JSON, or TOML when it is not JSON).

    Raises:
        ValueError: not a document of keys, or an entry that is incomplete or wrong (the message
            names the entry and the field; it never quotes a key).
    """
    try:
        document: Any = json.loads(text)
    except ValueError:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"neither JSON nor TOML ({exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError('expected a list of keys under "keys"')
    return KeyRing(_entry(index, entry) for index, entry in enumerate(entries)).specs


class KeyRing:
    """The configured keys; tells who presents a key."""

    def __init__(self, specs: Iterable[KeySpec]) -> None:
        self._specs = tuple(specs)
        names = [spec.name for spec in self._specs]
        if len(set(names)) != len(names) or len({s.sha256 for s in self._specs}) != len(names):
            raise ValueError("two keys have the same name or the same key")

    def __bool__(self) -> bool:
        return bool(self._specs)

    @property
    def specs(self) -> tuple[KeySpec, ...]:
        return self._specs

    def identify(self, token: str) -> KeySpec | None:
        """The key ``token`` is, or None. Compares with every key, always, in constant time."""
        digest = _digest(token)
        found: KeySpec | None = None
        for spec in self._specs:
            if hmac.compare_digest(digest, spec.sha256):
                found = spec
        return found


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _entry(index: int, entry: object) -> KeySpec:
    where = f"key #{index + 1}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} is not a table/object")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"{where} has unknown fields: {', '.join(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: name must be 1-64 of a-z, 0-9, '_', '.', '-'")
    where = f"key {name!r}"
    if sum(entry.get(field) is not None for field in ("key", "sha256")) != 1:
        raise ValueError(f"{where}: give exactly one of key and sha256")
    key, sha256 = entry.get("key"), entry.get("sha256")
    if key is not None:
        if not isinstance(key, str) or len(key) < 16 or key[0].isspace() or key[-1].isspace():
            raise ValueError(f"{where}: key must be 16 or more characters, no surrounding spaces")
        sha256 = _digest(key)
    elif not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits")
    models = _strings(entry, "models", where)
    apis = _strings(entry, "apis", where)
    if apis is not None and not set(apis) <= set(_APIS):
        raise ValueError(f"{where}: apis are {', '.join(_APIS)}")
    return KeySpec(
        name=name,
        sha256=sha256,
        secret=key,
        models=models,
        apis=frozenset(apis) if apis is not None else None,
        concurrency=_positive(entry, "concurrency", where),
        requests_per_minute=_positive(entry, "requests_per_minute", where),
        tokens_per_minute=_positive(entry, "tokens_per_minute", where),
        weight=_positive(entry, "weight", where) or 1,
    )


def _strings(entry: Mapping[str, Any], field: str, where: str) -> tuple[str, ...] | None:
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {field} must be a non-empty list of strings")
    return tuple(value)


def _positive(entry: Mapping[str, Any], field: str, where: str) -> int | None:
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {field} must be a whole number of at least 1")
    return value
