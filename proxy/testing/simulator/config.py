"""What the simulator reads from its environment, once at start, and Go's duration syntax.

``OLLAMA_HOST``, ``OLLAMA_MODELS`` and ``OLLAMA_KEEP_ALIVE`` are read as Ollama reads them
(:class:`ServerConfig`), except that ``OLLAMA_MODELS`` defaults to a directory of the simulator's
own, :data:`DEFAULT_MODELS_DIR` (``${XDG_CACHE_HOME:-~/.cache}/ubiops-ollama-proxy/
simulator-models``), never a real Ollama's ``~/.ollama/models``. The ``SIM_*`` variables inject
faults and set the pace (:class:`Faults`); they are a contract other tests rely on.
:func:`settings` lists every variable with a one-line meaning and its default (``ollama-sim
serve --help`` prints it), from the declarations the readers use. Every one is optional:

``SIM_START_DELAY`` (float seconds, default 0)
    Sleep before binding the port (a slow start). SIGTERM/SIGINT during the delay exit 0.
``SIM_EXIT_AT_START`` (int exit code, unset by default)
    After the start delay, print ``Error: listen tcp <addr>: simulated start failure`` to
    stderr and exit with this code without ever binding.
``SIM_PULL_FAILURES`` (int N, default 0) and ``SIM_PULL_FAILURE_MODE`` (default ``http500``)
    The first N ``/api/pull`` requests fail, whatever model they name:
    ``http500`` → HTTP 500 ``{"error": "..."}`` before any progress;
    ``cut`` → HTTP 200, ``pulling manifest`` and two layer-progress lines, then the connection is
    dropped without the terminating chunk; ``inband`` → HTTP 200, the same lines, then
    ``{"error":"max retries exceeded: ..."}`` and a clean end of stream (with ``stream:false``:
    HTTP 500 ``{"error": "max retries exceeded: ..."}``, as Ollama does).
``SIM_STATE_DIR`` (directory, unset by default)
    Persist fault counters there so they survive restarts: ``pull_failures`` (failures injected
    so far, so N is a total across restarts) and ``crashed`` (the crash-once marker). Every pull
    outcome is also appended to ``pulls.log`` there, one JSON object per line with keys
    ``time``, ``pid``, ``model``, ``outcome`` (``success`` | ``failed``), ``reason``
    (``null`` | ``http500`` | ``cut`` | ``inband`` | ``not_found``) and ``downloaded`` (true when
    a successful pull added a model that was not already present).
``SIM_PULL_DELAY`` (float seconds, default 0.01)
    Pause between pull progress lines.
``SIM_PULL_STEPS`` (int, default 5)
    Progress lines per layer for a layer not yet on disk (``completed`` grows to ``total``).
``SIM_CRASH_AFTER`` (int N, unset by default)
    The first N inference requests run normally; the (N+1)-th kills the process with
    ``os._exit(1)``: a streamed response dies right after its first chunk reached the socket, a
    non-streamed one before any response byte. Inference requests are chat/generate/embed on
    any API (native, OpenAI, Responses, Anthropic) that pass validation and are not
    load/unload-only (empty prompt/messages/input). This is the whole server dying: the client
    sees its connection cut, never an error body.
    With ``SIM_STATE_DIR`` the crash happens once: the ``crashed`` marker disables it after.
``SIM_TOKEN_DELAY`` (float seconds, default 0)
    Pause before each generated token (streamed or not).
``SIM_NUM_TOKENS`` (int, default 12)
    Tokens per completion, unless ``options.num_predict`` / ``max_tokens`` is smaller (then
    ``done_reason`` is ``length``).
``SIM_STREAM_CUT_AFTER`` (int K, unset by default)
    Every streamed inference response is dropped (connection closed, no terminating chunk)
    after its K-th chunk: an NDJSON line or an SSE event.
``SIM_STREAM_ERROR_AFTER`` (int K, unset by default)
    Every streamed inference response fails after its K-th chunk the way Ollama reports a model
    runner dying mid-generation (measured on 0.24.0 by killing the runner): native APIs get an
    in-band ``{"error": "an error was encountered while running the model: unexpected EOF"}``
    line; chat completions and completions get what Ollama's writer makes of that line (an
    empty chunk with ``"model": ""``, no ``[DONE]``); the Responses and Anthropic APIs get
    nothing more; every stream then ends cleanly. APIs that write several events per token fail
    at the first token boundary after K events. With K = 0 the runner fails before the first
    token: HTTP 500 with that message in the API's error shape, no stream. Non-streamed
    requests are not affected.
``SIM_LOAD_DELAY`` (float seconds, default 0)
    Time to "load" a model on first use (or after it expired); reported as ``load_duration``.
``SIM_EXTRA_MODELS`` (unset by default)
    More pullable models, read by :class:`~proxy.testing.simulator.models.Registry`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODELS_DIR",
    "EXTRA_MODELS",
    "FOREVER",
    "VERSION",
    "Faults",
    "PullFailureMode",
    "ServerConfig",
    "Setting",
    "default_models_dir",
    "env_keep_alive",
    "parse_go_duration",
    "parse_keep_alive",
    "parse_ollama_host",
    "settings",
]

VERSION = "0.24.0"
"""The Ollama release whose wire behaviour the simulator reproduces, proven against the real
binary of that release by ``tests/real_ollama/test_conformance.py``."""

FOREVER = math.inf
"""A keep-alive that never expires."""

_DEFAULT_PORT = 11434
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string (``1h30m``, ``-1s``, ``0``) into seconds.

    Raises:
        ValueError: with Go's own message.
    """
    body = text[1:] if text[:1] in "+-" else text
    sign = -1.0 if text.startswith("-") else 1.0
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    while pos < len(body):
        match = _TERM.match(body, pos)
        if match is None:
            digits = body[pos:].replace(".", "").isdigit()
            problem = "missing unit in duration" if digits else "invalid duration"
            raise ValueError(f'time: {problem} "{text}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def parse_keep_alive(value: object) -> float | None:
    """Decode a JSON ``keep_alive`` like Ollama's ``api.Duration``: seconds, ``math.inf`` = forever.

    Numbers are seconds, strings are Go durations, negatives mean forever, ``None`` means unset.

    Raises:
        ValueError: the value is not a duration.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    return FOREVER if seconds < 0 else seconds


def env_keep_alive(text: str | None) -> float:
    """``OLLAMA_KEEP_ALIVE``: Go duration or integer seconds, default 5m, negative = forever."""
    seconds = 300.0
    if text:
        try:
            seconds = parse_go_duration(text)
        except ValueError:
            if text.lstrip("+-").isdigit():
                seconds = float(int(text))
    return FOREVER if seconds < 0 else seconds


def _env(environ: Mapping[str, str], key: str) -> str:
    """Ollama's ``envconfig.Var``: trimmed, surrounding quotes removed."""
    return environ.get(key, "").strip().strip("\"'").strip()


def parse_ollama_host(value: str) -> tuple[str, int]:
    """Resolve ``OLLAMA_HOST`` to ``(host, port)`` exactly as ``envconfig.Host()`` does.

    ``""`` → ``127.0.0.1:11434``; ``host`` → port 11434; ``http://host`` → 80;
    ``https://host`` → 443; ``:port`` → all interfaces (host ``""``).
    """
    default_port = _DEFAULT_PORT
    scheme, sep, hostport = value.strip().partition("://")
    if not sep:
        hostport = value.strip()
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport = hostport.split("/", 1)[0]
    host, port_text = _split_host_port(hostport)
    if port_text is None:
        host, port_text = "127.0.0.1", str(default_port)
        if hostport:
            host = hostport.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = default_port
    if not 0 <= port <= 65535:
        port = default_port
    return host, port


def _split_host_port(text: str) -> tuple[str, str | None]:
    """Go's ``net.SplitHostPort``; ``(text, None)`` when there is no port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            return text, None
        return text[1:end], text[end + 2 :]
    if text.count(":") != 1:
        return text, None
    host, port = text.split(":")
    return host, port


DEFAULT_MODELS_DIR = "${XDG_CACHE_HOME:-~/.cache}/ubiops-ollama-proxy/simulator-models"
"""Where the simulator keeps its (fake) models when ``OLLAMA_MODELS`` is unset, as the help says
it; :func:`default_models_dir` resolves it. Not Ollama's ``~/.ollama/models``: a real Ollama's
models live there, and the simulator would mix its manifests into them."""


def default_models_dir(environ: Mapping[str, str]) -> Path:
    """:data:`DEFAULT_MODELS_DIR` for ``environ``: ``$XDG_CACHE_HOME`` when it is an absolute
    path (the XDG rule), else ``$HOME/.cache``."""
    cache = Path(environ.get("XDG_CACHE_HOME", ""))
    if not cache.is_absolute():
        cache = Path(environ.get("HOME") or Path.home()) / ".cache"
    return cache / "ubiops-ollama-proxy" / "simulator-models"


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable the simulator reads, as its help lists it."""

    name: str
    meaning: str
    default: str


EXTRA_MODELS = Setting(
    "SIM_EXTRA_MODELS",
    "more pullable models, comma-separated name[:tag]=chat|embedding[:dim]",
    "unset",
)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where to listen, where models live, and the default keep-alive (seconds; inf = forever)."""

    host: str
    port: int
    models_dir: Path
    keep_alive: float

    SETTINGS = (
        Setting("OLLAMA_HOST", "IP address and port to listen on", f"127.0.0.1:{_DEFAULT_PORT}"),
        Setting(
            "OLLAMA_MODELS",
            "the models directory",
            DEFAULT_MODELS_DIR,
        ),
        Setting("OLLAMA_KEEP_ALIVE", "how long a model stays loaded after use", "5m"),
    )
    """The Ollama variables :meth:`from_env` reads."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServerConfig:
        """Read the Ollama variables from ``environ``."""
        host, port = parse_ollama_host(_env(environ, "OLLAMA_HOST"))
        models = _env(environ, "OLLAMA_MODELS")
        return cls(
            host=host,
            port=port,
            models_dir=Path(models) if models else default_models_dir(environ),
            keep_alive=env_keep_alive(_env(environ, "OLLAMA_KEEP_ALIVE") or None),
        )

    @property
    def address(self) -> str:
        """``host:port`` as Ollama prints it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host or '[::]'}:{self.port}"


class PullFailureMode(enum.StrEnum):
    """How an injected pull failure shows itself."""

    HTTP500 = "http500"
    CUT = "cut"
    INBAND = "inband"


def _reads(name: str, convert: Callable[[str], object], meaning: str) -> dict[str, object]:
    """A :class:`Faults` field's metadata: read from ``$name`` with ``convert``; its meaning."""
    return {"env": name, "convert": convert, "meaning": meaning}


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault and pacing settings; see the module docstring for the environment contract.

    Each field declares the variable it is read from, how, its default and its meaning, which
    :meth:`from_env` and :meth:`settings` (the help) both use.
    """

    start_delay: float = field(
        default=0.0,
        metadata=_reads("SIM_START_DELAY", float, "seconds to wait before binding the port"),
    )
    exit_at_start: int | None = field(
        default=None,
        metadata=_reads(
            "SIM_EXIT_AT_START", int, "exit with this status instead of binding the port"
        ),
    )
    pull_failures: int = field(
        default=0, metadata=_reads("SIM_PULL_FAILURES", int, "the first N pulls fail")
    )
    pull_failure_mode: PullFailureMode = field(
        default=PullFailureMode.HTTP500,
        metadata=_reads(
            "SIM_PULL_FAILURE_MODE",
            PullFailureMode,
            f"how an injected pull failure shows: {' | '.join(PullFailureMode)}",
        ),
    )
    state_dir: Path | None = field(
        default=None,
        metadata=_reads(
            "SIM_STATE_DIR", Path, "directory keeping fault counters across restarts, and pulls.log"
        ),
    )
    pull_delay: float = field(
        default=0.01,
        metadata=_reads("SIM_PULL_DELAY", float, "seconds between pull progress lines"),
    )
    pull_steps: int = field(
        default=5, metadata=_reads("SIM_PULL_STEPS", int, "progress lines per layer pulled")
    )
    crash_after: int | None = field(
        default=None,
        metadata=_reads("SIM_CRASH_AFTER", int, "the process dies at inference request N+1"),
    )
    token_delay: float = field(
        default=0.0, metadata=_reads("SIM_TOKEN_DELAY", float, "seconds before each token")
    )
    num_tokens: int = field(
        default=12, metadata=_reads("SIM_NUM_TOKENS", int, "tokens per completion")
    )
    stream_cut_after: int | None = field(
        default=None,
        metadata=_reads("SIM_STREAM_CUT_AFTER", int, "every stream is cut after K chunks"),
    )
    stream_error_after: int | None = field(
        default=None,
        metadata=_reads(
            "SIM_STREAM_ERROR_AFTER",
            int,
            "every stream fails after K chunks, as when the model runner dies",
        ),
    )
    load_delay: float = field(
        default=0.0, metadata=_reads("SIM_LOAD_DELAY", float, "seconds to load a model")
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        """Read the ``SIM_*`` variables.

        Raises:
            ValueError: a variable is malformed; the message names it.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.metadata["env"]
            raw = environ.get(key, "").strip()
            if raw:
                try:
                    values[f.name] = f.metadata["convert"](raw)
                except ValueError:
                    raise ValueError(f"{key}: invalid value {raw!r}") from None
        faults = cls(**values)
        if faults.pull_steps < 1:
            raise ValueError("SIM_PULL_STEPS: must be at least 1")
        if min(faults.num_tokens, faults.pull_failures) < 0:
            raise ValueError("SIM_NUM_TOKENS and SIM_PULL_FAILURES must not be negative")
        return faults

    @classmethod
    def settings(cls) -> tuple[Setting, ...]:
        """The ``SIM_*`` variables :meth:`from_env` reads, from the fields' declarations."""
        return tuple(
            Setting(
                f.metadata["env"],
                f.metadata["meaning"],
                _shown(f.default),
            )
            for f in fields(cls)
        )


def _shown(default: object) -> str:
    if default is None:
        return "unset"
    return f"{default:g}" if isinstance(default, float) else str(default)


def settings() -> tuple[Setting, ...]:
    """Every variable the simulator reads: the Ollama ones, then the ``SIM_*`` ones."""
    return (*ServerConfig.SETTINGS, *Faults.settings(), EXTRA_MODELS)
