"""The SSE splitter the stream relay uses, fed the same events cut at every byte offset."""

from __future__ import annotations

import pytest

from relay.sse import EventSplitter

EVENTS = [b'data: {"event": "start"}', b": comment", b'data: {"event": "done"}']


def _stream(line_end: bytes, *, final_line_ends: int) -> bytes:
    parts = [event + line_end * 2 for event in EVENTS[:-1]]
    return b"".join(parts) + EVENTS[-1] + line_end * final_line_ends


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("final_line_ends", [0, 1, 2, 3])
def test_every_split_offset_gives_the_same_events(line_end: bytes, final_line_ends: int) -> None:
    data = _stream(line_end, final_line_ends=final_line_ends)
    for first in range(len(data) + 1):
        for second in (first, min(len(data), first + 1), min(len(data), first + 2)):
            splitter = EventSplitter()
            got = []
            for chunk in (data[:first], data[first:second], data[second:]):
                got += splitter.feed(chunk)
            got += splitter.close()
            assert got == EVENTS, (first, second)


def test_one_byte_at_a_time_with_mixed_line_ends() -> None:
    data = b'data: {"a": 1}\r\n\r\n\n: x\r\rdata: 1\r\ndata: 2\n\r\ndata: {"event": "done"}\r'
    splitter = EventSplitter()
    got = []
    for i in range(len(data)):
        got += splitter.feed(data[i : i + 1])
    assert got == [b'data: {"a": 1}', b": x", b"data: 1\ndata: 2"]
    assert splitter.close() == [b'data: {"event": "done"}']


def test_an_event_is_returned_as_soon_as_its_empty_line_is_complete() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\r\n\r") == [b"data: 1"]  # a CR alone ends a line
    assert splitter.feed(b"\ndata: 2\r") == []  # that LF was the CR's; this is the next event
    assert splitter.feed(b"\n") == []
    assert splitter.feed(b"\n") == [b"data: 2"]
    assert splitter.close() == []
