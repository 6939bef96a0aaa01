"""Go-compatible time handling: duration strings, ``keep_alive`` values and RFC 3339 stamps."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime

__all__ = [
    "FOREVER",
    "env_keep_alive",
    "format_local",
    "parse_go_duration",
    "parse_keep_alive",
    "rfc3339_utc",
]

FOREVER = math.inf
# Go saturates "forever" at MaxInt64 nanoseconds (about 292 years).
_MAX_SECONDS = (2**63 - 1) / 1e9
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
            problem = (
                "missing unit in duration"
                if body[pos:].replace(".", "").isdigit()
                else "invalid duration"
            )
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


def rfc3339_utc(ns: int | None = None) -> str:
    """``time.Now().UTC()`` as Go marshals it: RFC 3339 with trimmed nanoseconds and ``Z``."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{base}.{frac:09d}".rstrip("0") + "Z" if frac else base + "Z"


def format_local(timestamp: float) -> str:
    """A local wall-clock time as Go marshals it (``Z`` for UTC, else ``±hh:mm``)."""
    seconds = min(timestamp, time.time() + _MAX_SECONDS)
    moment = datetime.fromtimestamp(seconds).astimezone()
    text = moment.isoformat(timespec="microseconds")
    stamp, offset = text[:-6], text[-6:]
    if "." in stamp:
        stamp = stamp.rstrip("0").rstrip(".")
    return stamp + ("Z" if offset == "+00:00" else offset)
