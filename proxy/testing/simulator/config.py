"""The Ollama variables the simulator honours: OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_KEEP_ALIVE."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .timeutil import env_keep_alive

__all__ = ["ServerConfig", "parse_ollama_host"]

_DEFAULT_PORT = 11434


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


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where to listen, where models live, and the default keep-alive (seconds; inf = forever)."""

    host: str
    port: int
    models_dir: Path
    keep_alive: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServerConfig:
        """Read the Ollama variables from ``environ``."""
        host, port = parse_ollama_host(_env(environ, "OLLAMA_HOST"))
        models = _env(environ, "OLLAMA_MODELS")
        home = environ.get("HOME") or str(Path.home())
        return cls(
            host=host,
            port=port,
            models_dir=Path(models) if models else Path(home) / ".ollama" / "models",
            keep_alive=env_keep_alive(_env(environ, "OLLAMA_KEEP_ALIVE") or None),
        )

    @property
    def loopback(self) -> bool:
        """Whether the listener is on a loopback address (Ollama then checks ``Host`` headers)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def address(self) -> str:
        """``host:port`` as Ollama prints it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host or '[::]'}:{self.port}"
