"""What every part of the fake UbiOps API shares: the project's state, the recorded calls, ids,
error answers and the label rule."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__test__ = False

DEDICATED = "16384 MB + 4 vCPU (Dedicated)"
NOW = "2026-11-25T06:00:00.000000Z"
LABEL_PART = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")
"""The strictest plausible rule for a label key, and for each ``;``-separated part of a value:
lowercase letters, digits, ``-``, ``_``, ``.``, at most 63 characters, alphanumeric at the ends
(UbiOps documents none; its label filters use ``key:value,key:value``)."""

Handler = Callable[[web.Request], Any]
Route = tuple[str, str, Handler]


@dataclass(frozen=True)
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any

    @property
    def mutating(self) -> bool:
        return self.method in {"POST", "PATCH", "PUT", "DELETE"}


@dataclass
class State:
    """What the fake project holds; tests may edit it between runs."""

    project: str = "demo"
    tokens: set[str] = field(default_factory=lambda: {"good-token"})
    instance_types: list[str] = field(default_factory=lambda: [DEDICATED, "2048 MB + 0.5 vCPU"])
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    variables: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    secret_values: dict[str, str] = field(default_factory=dict)
    revisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[tuple[str, str, bytes]] = field(default_factory=list)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_revision_build: str | None = None
    fail_environment_build: str | None = None
    build_logs: list[str] = field(default_factory=list)
    log_queries: list[str] = field(default_factory=list)


class FakeBase:
    """The state and helpers every route group of the fake works with."""

    def __init__(self) -> None:
        self.state = State()
        self.calls: list[Call] = []
        self.url = ""
        self._ids = itertools.count(1)

    def _id(self) -> str:
        return str(uuid.UUID(int=next(self._ids)))

    def mutations(self) -> list[tuple[str, str]]:
        """The method and path of every call that changed something, in order."""
        return [(c.method, c.path) for c in self.calls if c.mutating]

    def variable(self, deployment: str, version: str, name: str) -> dict[str, Any] | None:
        """A version's own environment variable, as stored (secret values included)."""
        for item in self.state.variables.get((deployment, version), []):
            if item["name"] == name:
                return item
        return None


def error(status: int, message: str) -> web.Response:
    """An error answer in the API's shape."""
    return web.json_response({"error": message}, status=status)


def label_problem(labels: object) -> str | None:
    """Why ``labels`` break the label rule (:data:`LABEL_PART`), or None when they keep it."""
    if labels is None:
        return None
    if not isinstance(labels, Mapping):
        return "labels must be an object"
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_PART.fullmatch(key):
            return f"Invalid label key {key!r}."
        if not isinstance(value, str) or not all(
            LABEL_PART.fullmatch(part) for part in value.split(";")
        ):
            return (
                f"Invalid value for label {key!r}: {value!r} (each ';'-separated part: lowercase "
                "letters, digits, '-', '_', '.', at most 63 characters)"
            )
    return None
