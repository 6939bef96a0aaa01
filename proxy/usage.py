"""Token usage, read from what Ollama already returns, without parsing the answer.

Every answer of every API ends with its counts: Ollama's ``prompt_eval_count``/``eval_count``
and their durations, OpenAI's ``usage`` (``prompt_tokens``/``completion_tokens``, or
``input_tokens``/``output_tokens`` in the Responses API), Anthropic's ``usage``. They stand in
the last line, event or bytes of the answer, so :func:`usage_in` reads them from its tail once,
at the end.

For OpenAI chat and completion streams the counts come only when the client asked for them
(``stream_options.include_usage``). The proxy always asks Ollama, so its metrics are never zero,
and :class:`UsageChunkFilter` takes the usage-only chunk out again when the client did not ask:
the client sees exactly the stream it requested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TAIL", "Usage", "UsageChunkFilter", "usage_in"]

TAIL = 4096
"""How many of an answer's last bytes hold its counts."""

_COUNT = re.compile(
    rb'"(prompt_eval_count|eval_count|prompt_eval_duration|eval_duration|load_duration'
    rb'|prompt_tokens|completion_tokens|input_tokens|output_tokens)"\s*:\s*(\d+)'
)
_NANOSECONDS = 1e-9
_USAGE_CHUNK = (b'"choices":[]', b'"usage"')


@dataclass(frozen=True, slots=True)
class Usage:
    """One answer's counts (None where the API does not report them)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_seconds: float | None = None
    completion_seconds: float | None = None
    load_seconds: float | None = None

    @property
    def total(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def usage_in(tail: bytes) -> Usage | None:
    """The counts in the tail of an answer (the last of each), or None when it has none."""
    found: dict[bytes, int] = {name: int(value) for name, value in _COUNT.findall(tail)}
    if not found:
        return None
    prompt = _first(found, b"prompt_eval_count", b"prompt_tokens", b"input_tokens")
    completion = _first(found, b"eval_count", b"completion_tokens", b"output_tokens")
    seconds = {name: value * _NANOSECONDS for name, value in found.items() if b"duration" in name}
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        prompt_seconds=seconds.get(b"prompt_eval_duration"),
        completion_seconds=seconds.get(b"eval_duration"),
        load_seconds=seconds.get(b"load_duration"),
    )


def _first(found: dict[bytes, int], *names: bytes) -> int | None:
    return next((found[name] for name in names if name in found), None)


class UsageChunkFilter:
    """Takes the usage-only chunk (``"choices":[]`` with ``"usage"``) out of an OpenAI stream.

    Feed it the stream's pieces in order; it returns what to send on. It holds back only an
    event not yet complete (at most one), and keeps the chunk it took out in :attr:`taken`.
    """

    __slots__ = ("_held", "taken")

    def __init__(self) -> None:
        self._held = b""
        self.taken = b""

    def feed(self, piece: bytes) -> bytes:
        data = self._held + piece
        end = data.rfind(b"\n\n") + 2
        complete, self._held = (data[:end], data[end:]) if end >= 2 else (b"", data)
        if all(marker in complete for marker in _USAGE_CHUNK):
            events = complete.split(b"\n\n")
            kept = []
            for event in events[:-1]:
                if all(marker in event for marker in _USAGE_CHUNK):
                    self.taken = event
                else:
                    kept.append(event + b"\n\n")
            complete = b"".join(kept)
        return complete

    def flush(self) -> bytes:
        """What is still held back at the end of the stream."""
        held, self._held = self._held, b""
        return held
