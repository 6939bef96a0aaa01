"""Server-Sent Events, read incrementally: what the request processes relay from the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent"]


class SSEEvent(NamedTuple):
    """One event: its name (``message`` when it has no ``event:`` line) and its data text."""

    name: str
    data: str


class SSEDecoder:
    """Incremental Server-Sent Events decoder: bytes in, complete events out.

    Lines end in LF, CRLF or CR; ``data:`` lines are joined with LF; one space after the colon
    is dropped; other fields and comments are ignored; a blank line ends an event, and an event
    without data is not dispatched (as the SSE specification says).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._name = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        """Yield every event completed by ``chunk``."""
        data, held = self._buffer + chunk, b""
        if data.endswith(b"\r"):  # it may be the first half of a CRLF: wait for the next byte
            data, held = data[:-1], b"\r"
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop() + held
        for line in lines:
            if not line:
                if self._data:
                    yield SSEEvent(self._name or "message", "\n".join(self._data))
                self._name, self._data = "", []
            elif line.startswith(b"data:"):
                self._data.append(_value(line, 5))
            elif line.startswith(b"event:"):
                self._name = _value(line, 6)


def _value(line: bytes, start: int) -> str:
    value = line[start:]
    return (value[1:] if value.startswith(b" ") else value).decode()
