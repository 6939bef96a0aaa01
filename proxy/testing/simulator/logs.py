"""Ollama-style logging to stderr: Go ``slog`` text lines and Gin access lines."""

from __future__ import annotations

import sys
import time

__all__ = ["access", "log"]


def _value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def log(level: str, source: str, msg: str, **attrs: object) -> None:
    """Write ``time=… level=… source=… msg="…" key=value`` to stderr, like Ollama's slog."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    parts = [f"time={stamp}", f"level={level}", f"source={source}", f"msg={_value(msg)}"]
    parts.extend(f"{key}={_value(value)}" for key, value in attrs.items())
    sys.stderr.write(" ".join(parts) + "\n")
    sys.stderr.flush()


def access(status: int, seconds: float, client: str, method: str, path: str) -> None:
    """Write a Gin access line: ``[GIN] 2026/01/02 - 15:04:05 | 200 | 1.2ms | ... | POST "/x"``."""
    if seconds < 1e-3:
        latency = f"{seconds * 1e6:.3f}µs"
    elif seconds < 1:
        latency = f"{seconds * 1e3:.6f}ms"
    else:
        latency = f"{seconds:.9f}s"
    stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
    sys.stderr.write(
        f'[GIN] {stamp} | {status:3d} | {latency:>13} | {client:>15} | {method:<7} "{path}"\n'
    )
    sys.stderr.flush()
