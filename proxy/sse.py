"""Server-Sent Events, read incrementally: what the request processes relay from the proxy."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["SSEDecoder"]


class SSEDecoder:
    """Incremental Server-Sent Events decoder: bytes in, the data text of each event out.

    Lines end in LF, CRLF or CR; ``data:`` lines are joined with LF; one space after the colon
    is dropped; other fields and comments are ignored; a blank line ends an event.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[str]:
        """Yield the data of every event completed by ``chunk``."""
        data, held = self._buffer + chunk, b""
        if data.endswith(b"\r"):  # it may be the first half of a CRLF: wait for the next byte
            data, held = data[:-1], b"\r"
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop() + held
        for line in lines:
            if not line:
                if self._data:
                    yield "\n".join(self._data)
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append((value[1:] if value.startswith(b" ") else value).decode())
