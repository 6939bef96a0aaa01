"""The relay's end-of-stream checks and error framing, without a network."""

from __future__ import annotations

import json

import pytest

from proxy.endpoints import Framing
from proxy.errors import stream_error_frame
from proxy.relay import _LAST_EVENTS, _incomplete_end, _LastEvent, _terminate

DONE_LINE = b'{"model":"m","done":true,"done_reason":"stop"}\n'
PART_LINE = b'{"model":"m","response":"x","done":false}\n'


@pytest.mark.parametrize(
    ("prev", "last"),
    [
        (PART_LINE, DONE_LINE),
        (b"", PART_LINE + DONE_LINE),
        (PART_LINE + DONE_LINE[:10], DONE_LINE[10:]),  # the last line spans two chunks
        (PART_LINE, b'{"error":"runner died"}\n'),  # an in-band error is a proper end
        (b"", b'{"model": "m", "done": true}\n'),  # spaces, as Python's json writes
    ],
)
def test_ndjson_ends_that_are_complete(prev: bytes, last: bytes) -> None:
    assert _incomplete_end(Framing.NDJSON, prev, last) is None


@pytest.mark.parametrize(
    ("prev", "last"),
    [
        (PART_LINE, PART_LINE),
        (PART_LINE, DONE_LINE[:20]),
        (b"", b""),
        (b"", b"\n"),
    ],
)
def test_ndjson_ends_that_are_truncated(prev: bytes, last: bytes) -> None:
    assert _incomplete_end(Framing.NDJSON, prev, last)


def test_sse_end_needs_done() -> None:
    event = b'data: {"id":"x","choices":[]}\n\n'
    assert _incomplete_end(Framing.SSE, event, b"data: [DONE]\n\n") is None
    assert _incomplete_end(Framing.SSE, event + b"data: [DO", b"NE]\n\n") is None
    assert _incomplete_end(Framing.SSE, event, event)
    message = _incomplete_end(Framing.SSE, event, b'data: {"error":{"message":"boom"}}\n\n')
    assert message is not None
    assert "boom" in message


@pytest.mark.parametrize(
    ("framing", "last", "expected"),
    [
        (Framing.NDJSON, PART_LINE, b""),
        (Framing.NDJSON, b'{"mod', b"\n"),
        (Framing.SSE, b"data: {}\n\n", b""),
        (Framing.SSE, b"data: {}\n", b"\n"),
        (Framing.SSE, b"data: {", b"\n\n"),
    ],
)
def test_error_frames_stand_on_their_own(framing: Framing, last: bytes, expected: bytes) -> None:
    assert _terminate(framing, b"", last) == expected


def test_error_frames() -> None:
    sse = stream_error_frame(Framing.SSE, "cut")
    assert sse.startswith(b"data: ")
    assert sse.endswith(b"\n\n")
    assert json.loads(sse[6:])["error"] == {
        "message": "cut",
        "type": "api_error",
        "param": None,
        "code": "upstream_error",
    }
    assert stream_error_frame(Framing.NDJSON, "cut") == b'{"error": "cut"}\n'


ANTHROPIC_END = (
    b'event: content_block_delta\ndata: {"delta":{"text":"event: not a line start"}}\n\n'
    b'event: message_delta\ndata: {"delta":{}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


@pytest.mark.parametrize("size", [1, 7, 64, len(ANTHROPIC_END)])
def test_the_last_named_event_is_found_however_the_stream_is_cut(size: int) -> None:
    last = _LastEvent()
    for i in range(0, len(ANTHROPIC_END), size):
        last.feed(ANTHROPIC_END[i : i + size])
    assert last.name == b"message_stop"
    assert last.incomplete(_LAST_EVENTS[Framing.SSE_ANTHROPIC]) is None


def test_event_text_inside_data_is_not_an_event() -> None:
    last = _LastEvent()
    last.feed(
        b'event: response.output_text.delta\ndata: {"delta":"\\nevent: response.completed"}\n\n'
    )
    assert last.name == b"response.output_text.delta"
    assert last.incomplete(_LAST_EVENTS[Framing.SSE_RESPONSES]) is not None
