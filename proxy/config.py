"""Settings: read once from the environment, validated, frozen.

Every component takes the one :class:`Settings` object it needs through its constructor; nothing
else in the package reads ``os.environ`` for configuration. A bad value raises :class:`ConfigError`
naming the variable, and the command line turns that into exit status 2 with one line of text.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from proxy.catalog import Catalog, CatalogError, Model, UnknownModelError
from proxy.keys import KeySpec, parse_keys

__all__ = ["ConfigError", "LogFormat", "LogLevel", "Settings", "load_settings", "split_host_port"]

LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

_LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")
_LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable holds a value the proxy cannot use."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the proxy, supervisor and deployment, with its default."""

    ollama_bin: str = "ollama"
    catalog: Catalog = field(default_factory=Catalog)
    ollama_internal_host: str = "127.0.0.1"
    ollama_internal_port: int = 11435
    proxy_host: str = "0.0.0.0"
    proxy_port: int = 11434
    proxy_api_key: str | None = None
    proxy_admin_key: str | None = None
    log_format: LogFormat = "json"
    log_level: LogLevel = "info"
    ollama_start_timeout: float = 120.0
    ollama_start_attempts: int = 3
    pull_concurrency: int = 2
    pull_retries: int = 5
    preload_models: bool = True
    shutdown_grace: float = 10.0
    proxy_max_body: int = 8 * 1024 * 1024
    proxy_request_timeout: float = 600.0
    proxy_client_timeout: float = 30.0
    ollama_num_parallel: int = 1
    proxy_max_concurrency: int | None = None
    model_concurrency: tuple[tuple[str, int], ...] = ()
    keys: tuple[KeySpec, ...] = ()
    proxy_max_queue: int = 512
    proxy_max_embed_inputs: int = 2048
    proxy_max_embed_input_chars: int = 32768
    proxy_max_num_ctx: int = 8192
    ready_timeout: float = 1800.0

    @property
    def ollama_address(self) -> str:
        """``host:port`` of the supervised ``ollama serve`` (``[v6]:port`` for IPv6)."""
        host = self.ollama_internal_host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.ollama_internal_port}"

    @property
    def ollama_url(self) -> str:
        """Base URL of the supervised ``ollama serve``."""
        return f"http://{self.ollama_address}"

    @property
    def bind_host(self) -> str:
        """The address the proxy really listens on: loopback only while no key is set."""
        return self.proxy_host if self.proxy_api_key or self.keys else "127.0.0.1"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every key the proxy knows in plain text: masked in every log line."""
        keys = (self.proxy_api_key, self.proxy_admin_key, *(k.secret for k in self.keys))
        return tuple(key for key in keys if key)

    def budget(self, model: Model) -> int:
        """How many requests for ``model`` may be in Ollama at once.

        ``PROXY_MODEL_CONCURRENCY`` for that model, else ``PROXY_MAX_CONCURRENCY``, else a share
        of ``OLLAMA_NUM_PARALLEL`` by kind: four times it for a chat model (streams last), eight
        times for an embedding model (short, batched requests).
        """
        for tag, limit in self.model_concurrency:
            if tag == model.tag:
                return limit
        if self.proxy_max_concurrency is not None:
            return self.proxy_max_concurrency
        return (8 if model.is_embedding else 4) * self.ollama_num_parallel

    @property
    def local_proxy_url(self) -> str:
        """How a process of the same instance reaches the proxy (always over loopback)."""
        return f"http://127.0.0.1:{self.proxy_port}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``environ`` (default: ``os.environ``).

    Raises:
        ConfigError: the first variable whose value is unusable, with what is wrong with it.
    """
    env = _Env(os.environ if environ is None else environ)
    internal_host, internal_port = split_host_port(
        env.text("OLLAMA_INTERNAL_HOST", "127.0.0.1:11435"), "OLLAMA_INTERNAL_HOST", 11435
    )
    if not _is_loopback(internal_host):
        raise ConfigError(
            "OLLAMA_INTERNAL_HOST",
            f"{internal_host!r} is not a loopback address; Ollama has no authentication "
            "and must only listen on 127.0.0.1, ::1 or localhost",
        )
    try:
        catalog = Catalog.parse(
            env.text("OLLAMA_CHAT_MODELS", ""),
            env.text("OLLAMA_EMBEDDING_MODELS", ""),
            env.text("MODEL_ALIASES", ""),
        )
    except CatalogError as exc:
        raise ConfigError(exc.variable, exc.problem) from None
    num_parallel = env.number("OLLAMA_NUM_PARALLEL", 1, int, minimum=1)
    settings = Settings(
        ollama_bin=env.text("OLLAMA_BIN", "ollama", required=True),
        catalog=catalog,
        ollama_internal_host=internal_host,
        ollama_internal_port=internal_port,
        proxy_host=env.text("PROXY_HOST", "0.0.0.0", required=True),
        proxy_port=env.number("PROXY_PORT", 11434, int, minimum=1, maximum=65535),
        proxy_api_key=env.secret("PROXY_API_KEY"),
        proxy_admin_key=env.secret("PROXY_ADMIN_KEY"),
        log_format=env.choice("LOG_FORMAT", "json", _LOG_FORMATS),
        log_level=env.choice("LOG_LEVEL", "info", _LOG_LEVELS),
        ollama_start_timeout=env.number("OLLAMA_START_TIMEOUT", 120.0, float, minimum=0.1),
        ollama_start_attempts=env.number("OLLAMA_START_ATTEMPTS", 3, int, minimum=1),
        pull_concurrency=env.number("PULL_CONCURRENCY", 2, int, minimum=1),
        pull_retries=env.number("PULL_RETRIES", 5, int, minimum=1),
        preload_models=env.flag("PRELOAD_MODELS", True),
        shutdown_grace=env.number("SHUTDOWN_GRACE", 10.0, float, minimum=0.0),
        proxy_max_body=env.number("PROXY_MAX_BODY", 8 * 1024 * 1024, int, minimum=1024),
        proxy_request_timeout=env.number("PROXY_REQUEST_TIMEOUT", 600.0, float, minimum=0.1),
        proxy_client_timeout=env.number("PROXY_CLIENT_TIMEOUT", 30.0, float, minimum=0.1),
        ollama_num_parallel=num_parallel,
        proxy_max_concurrency=env.optional_number("PROXY_MAX_CONCURRENCY", minimum=1),
        model_concurrency=_model_concurrency(env.text("PROXY_MODEL_CONCURRENCY", ""), catalog),
        keys=_keys(env.text("PROXY_KEYS", ""), env.text("PROXY_KEYS_FILE", "")),
        # No stricter than Ollama alone: its own queue holds OLLAMA_MAX_QUEUE (512) requests.
        proxy_max_queue=env.number(
            "PROXY_MAX_QUEUE", env.number("OLLAMA_MAX_QUEUE", 512, int, minimum=0), int, minimum=0
        ),
        proxy_max_embed_inputs=env.number("PROXY_MAX_EMBED_INPUTS", 2048, int, minimum=1),
        proxy_max_embed_input_chars=env.number(
            "PROXY_MAX_EMBED_INPUT_CHARS", 32768, int, minimum=1
        ),
        proxy_max_num_ctx=env.number("PROXY_MAX_NUM_CTX", 8192, int, minimum=0),
        ready_timeout=env.number("READY_TIMEOUT", 1800.0, float, minimum=0.1),
    )
    if settings.proxy_api_key and settings.proxy_api_key == settings.proxy_admin_key:
        raise ConfigError("PROXY_ADMIN_KEY", "must differ from PROXY_API_KEY")
    listed = {key.secret for key in settings.keys}
    if listed & {settings.proxy_api_key, settings.proxy_admin_key} - {None}:
        raise ConfigError("PROXY_KEYS", "a key of PROXY_KEYS is also PROXY_API_KEY or its admin")
    return settings


def _model_concurrency(text: str, catalog: Catalog) -> tuple[tuple[str, int], ...]:
    """``model=N;model=N`` (``PROXY_MODEL_CONCURRENCY``), each model by its Ollama tag."""
    variable = "PROXY_MODEL_CONCURRENCY"
    limits = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, number = (part.strip() for part in item.partition("="))
        if not sep or not number.isdigit() or int(number) < 1:
            raise ConfigError(variable, f"{item!r} is not of the form model=N (N at least 1)")
        try:
            model = catalog.resolve(name)
        except UnknownModelError:
            raise ConfigError(variable, f"{name!r} is not a configured model") from None
        limits.append((model.tag, int(number)))
    return tuple(limits)


def _keys(text: str, path: str) -> tuple[KeySpec, ...]:
    """The keys of ``PROXY_KEYS``, or of the file ``PROXY_KEYS_FILE`` names."""
    if text and path:
        raise ConfigError("PROXY_KEYS_FILE", "set PROXY_KEYS or PROXY_KEYS_FILE, not both")
    variable = "PROXY_KEYS_FILE" if path else "PROXY_KEYS"
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(variable, f"cannot read {path!r}: {exc.strerror}") from None
    if not text:
        return ()
    try:
        return parse_keys(text)
    except ValueError as exc:
        raise ConfigError(variable, str(exc)) from None


def split_host_port(value: str, variable: str, default_port: int) -> tuple[str, int]:
    """Split ``host[:port]`` (``[v6]:port`` for IPv6) the way Ollama reads OLLAMA_HOST."""
    text = value.strip()
    for scheme in ("http://", "https://"):
        text = text.removeprefix(scheme)
    text = text.rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ConfigError(variable, f"{value!r} names no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(variable, f"{port_text!r} is not a port number (1-65535)")
    return host, int(port_text)


class _Env:
    """Typed readers over an environment mapping; each raises ConfigError naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str, *, required: bool = False) -> str:
        value = self._environ.get(name, default).strip()
        if required and not value:
            raise ConfigError(name, "must not be empty")
        return value

    def secret(self, name: str) -> str | None:
        value = self._environ.get(name, "")
        if value != value.strip():
            raise ConfigError(name, "has leading or trailing white space")
        if value and len(value) < 16:
            raise ConfigError(name, "is too short; use at least 16 characters")
        return value or None

    def flag(self, name: str, default: bool) -> bool:
        value = self._environ.get(name, "").strip().lower()
        if not value:
            return default
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(name, f"{value!r} is not a boolean (use true or false)")

    def choice(self, name: str, default: T, choices: tuple[T, ...]) -> T:
        value = self._environ.get(name, "").strip().lower()
        if not value:
            return default
        for choice in choices:
            if value == choice:
                return choice
        raise ConfigError(name, f"{value!r} is not one of {', '.join(map(str, choices))}")

    def optional_number(self, name: str, *, minimum: int) -> int | None:
        """An optional whole number: None when unset or empty."""
        if not self._environ.get(name, "").strip():
            return None
        return self.number(name, minimum, int, minimum=minimum)

    def number(
        self,
        name: str,
        default: T,
        parse: Callable[[str], T],
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> T:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        kind = "an integer" if parse is int else "a number"
        try:
            value = parse(raw)
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not {kind}") from None
        number = float(value)  # type: ignore[arg-type]
        if not math.isfinite(number):
            raise ConfigError(name, f"{raw!r} is not {kind}")
        if minimum is not None and number < minimum:
            raise ConfigError(name, f"{raw} is below the minimum of {minimum:g}")
        if maximum is not None and number > maximum:
            raise ConfigError(name, f"{raw} is above the maximum of {maximum:g}")
        return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
