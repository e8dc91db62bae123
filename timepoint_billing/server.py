"""The production server's HTTP protocol: uvicorn's, with a bound on how long a client may take
to send a request's headers, JSON bodies on the errors uvicorn answers itself, and a way for a
request to learn that its client left without a task listening for it (`DisconnectWatch`).

uvicorn (0.54) has no header-read timeout: its keep-alive timer is armed only after a response
and any byte cancels it, so a client that opens connections and trickles headers a byte at a
time (slowloris) holds them, and a worker's file descriptors, for as long as it likes. Here a
timer starts when a connection opens and when a request's first byte arrives, and stops when the
headers are complete; when it fires the client gets 408 and the connection is closed. Malformed
requests (header injection, bad request lines), which uvicorn answers with a plain-text 400,
get the gateway's `{"detail", "code"}` body too.

    gunicorn timepoint_billing.asgi:application -k timepoint_billing.server.GatewayUvicornWorker

This subclasses uvicorn's protocol (there is no setting or hook for either): keep it in step
with uvicorn's `HttpToolsProtocol` when uvicorn is upgraded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from timepoint_billing.asgi_handler import DISCONNECT_WATCH, DisconnectWatch


def header_timeout_seconds() -> float:
    # Read per connection: the worker loads the application (and so Django's settings) before
    # it accepts the first one.
    return float(settings.HTTP_HEADER_TIMEOUT_SECONDS)


def _error(status: int, reason: str, detail: str, code: str) -> bytes:
    body = json.dumps({"detail": detail, "code": code}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


REQUEST_TIMEOUT = _error(
    408, "Request Timeout", "The request headers took too long to arrive.", "request_timeout"
)


class HeadWithBody:
    """The transport as one request's `RequestResponseCycle` sees it: the response head is held
    back and written with the body's first part, one `send()` and one TCP segment where uvicorn
    wrote two (a system call, a loopback delivery and often a wake-up of the client each; issue
    17). A head with no body part in the same turn of the event loop (a stream waiting for its
    first event) goes out on the next turn. Everything else is the protocol's transport."""

    __slots__ = ("cycle", "head", "held", "loop", "transport")

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, cycle: Any
    ) -> None:
        self.transport = transport
        self.loop = loop
        self.cycle = cycle
        self.head: bytes | None = None
        self.held = False

    def write(self, data: bytes) -> None:
        if not self.held and self.cycle.response_started:
            # The first write once the response has started is its head (uvicorn sets
            # `response_started` and then writes it; a `100 Continue` is written before).
            self.held = True
            self.head = data
            self.loop.call_soon(self.flush)
            return
        if self.head is not None:
            data, self.head = self.head + data, None
        self.transport.write(data)

    def flush(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            if not self.transport.is_closing():
                self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(
                header_timeout_seconds(), self._headers_too_slow
            )

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            watch = cycle.scope.get(DISCONNECT_WATCH)  # type: ignore[typeddict-item]
            if isinstance(watch, DisconnectWatch):
                watch.client_left()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        # Before the cycle starts: its scope is this dict (asgi_handler.DisconnectWatch).
        self.scope[DISCONNECT_WATCH] = DisconnectWatch()  # type: ignore[literal-required]
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # the cycle just made
            cycle.transport = HeadWithBody(self.transport, self.loop, cycle)  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        self._disarm_header_timer()
        self.transport.write(_error(400, "Bad Request", msg, "bad_request"))
        self.transport.close()


class GatewayUvicornWorker(UvicornWorker):
    """gunicorn's worker class for the gateway: uvloop and the protocol above."""

    CONFIG_KWARGS = {"loop": "auto", "http": "timepoint_billing.server:GatewayHttpProtocol"}
