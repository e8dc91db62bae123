"""Splitting an upstream's server-sent events into whole events, chunk by chunk.

The relay passes Flash's events on one by one as they complete and reads the terminal one (`done`
or `error`) to settle the stream's credits and usage record, so it must find every event boundary
however the network cut the bytes. The SSE grammar (WHATWG HTML, "Parsing an event stream") ends
a line with CRLF, LF or a lone CR, and an event with an empty line: `\\r\\n\\r\\n`, `\\n\\n`,
`\\r\\r` (and mixtures). A boundary may arrive split over two chunks, even a CRLF itself (`\\r` at
the end of one chunk, `\\n` at the start of the next), and the upstream may close the stream
without the final empty line.

No library does this for the relay's byte stream: SSE client libraries (httpx-sse, sseclient)
read from their own HTTP client's response, not from chunks the relay already holds. Each event
is then decoded (`event_data`) and passed on re-encoded (`event_bytes`) with only its documented
fields (`relay.projection`).
"""

from __future__ import annotations

import json
from typing import Any

from timepoint_billing import json_codec


class EventSplitter:
    """Feed chunks as they arrive; get back each complete event's lines (LF-terminated lines
    joined by LF, without the empty line that ended it). `close()` returns what is left when the
    upstream ends the stream."""

    def __init__(self) -> None:
        self._lines = b""  # normalised to LF: complete and incomplete lines of the current event
        self._skip_lf = False  # the last chunk ended with CR: an LF first in this one is its CRLF

    def feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        # A CR last in a chunk ends its line now (an event it completes is passed on at once,
        # not when the next chunk comes); an LF right after it belongs to it.
        self._skip_lf = chunk.endswith(b"\r")
        if not chunk:
            return []
        self._lines += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return self._split()

    def close(self) -> list[bytes]:
        """The upstream ended the stream: an event that was not followed by an empty line is
        complete all the same (the upstream has nothing more to add), so it is returned rather
        than dropped."""
        self._skip_lf = False
        events = self._split()
        rest, self._lines = self._lines.strip(b"\n"), b""
        if rest:
            events.append(rest)
        return events

    def _split(self) -> list[bytes]:
        events: list[bytes] = []
        # An event starts after the previous empty line; blank lines between events are skipped.
        while b"\n\n" in self._lines:
            block, self._lines = self._lines.split(b"\n\n", 1)
            block = block.lstrip(b"\n")
            if block:
                events.append(block)
        return events


def event_data(block: bytes) -> Any:
    """The JSON value an event's `data:` lines hold (joined by LF, one leading space dropped, as
    the grammar says), or None when it has none or they are not JSON."""
    lines = [line[5:] for line in block.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        return json_codec.loads(b"\n".join(line.removeprefix(b" ") for line in lines))
    except ValueError:
        return None


def event_bytes(value: Any) -> bytes:
    """One event carrying `value` as JSON: a single `data:` line and the empty line ending it."""
    return b"data: " + json.dumps(value).encode() + b"\n\n"
