"""Slowloris against the production server (gunicorn + GatewayUvicornWorker, 2 workers, DEBUG
off, the Dockerfile's flags with `--keep-alive` scaled down from 75 s to KEEP_ALIVE and the header
timeout from 10 s to HEADER_TIMEOUT so the test is short).

Hundreds of connections that trickle a request's headers one byte at a time and never finish,
or connect and send nothing, while normal clients keep calling: those are answered promptly.

What closes a slow connection: uvicorn's `timeout_keep_alive` (gunicorn `--keep-alive`), armed
after a response, for an idle keep-alive connection; and the gateway's header timeout
(timepoint_billing/server.py, HTTP_HEADER_TIMEOUT_SECONDS) for a connection that does not finish
its request's headers in time, answered 408 JSON. uvicorn alone has no such timer (it held every
slow connection open as long as the client liked).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

KEEP_ALIVE = 2  # seconds; production: 75
HEADER_TIMEOUT = 2  # seconds; production: 10
SLOW = 150  # connections trickling headers
SILENT = 50  # connections that send nothing
IDLE = 20  # connections idle after one complete request (the keep-alive timer's case)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed it: drain what it sent, then see end-of-file or a reset."""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not data:
            return True


def _trickle(socks: list[socket.socket], byte: bytes) -> None:
    for sock in socks:
        try:
            sock.send(byte)
        except OSError:
            pass  # closed by the server: noticed by `_closed_by_server`


@pytest.fixture
def slow_server(
    production_gateway: Any, flash_peer: Any, clockchain_peer: Any, user: Any, make_key: Any
) -> Iterator[tuple[Any, str]]:
    _, raw = make_key(user, rate_limit_per_minute=10_000, concurrency_limit=100)
    server = production_gateway(
        {"LOG_LEVEL": "WARNING", "HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)},
        keep_alive=KEEP_ALIVE,
    )
    yield server, raw


def _open_slow(port: int) -> tuple[list[socket.socket], list[socket.socket]]:
    slow = [_connect(port) for _ in range(SLOW)]
    _trickle(slow, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    silent = [_connect(port) for _ in range(SILENT)]
    return slow, silent


def test_normal_clients_are_answered_during_slowloris(
    slow_server: tuple[Any, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, raw = slow_server
    slow, silent = _open_slow(server.port)
    idle = []
    for _ in range(IDLE):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "a complete request went unanswered"
        sock.setblocking(False)
        idle.append(sock)
    opened = time.monotonic()
    slowest = 0.0
    answered = 0
    try:
        with httpx.Client(base_url=server.url, timeout=5, trust_env=False) as client:
            while time.monotonic() - opened < KEEP_ALIVE + 2:
                _trickle(slow, b"a")
                for path, headers in (
                    ("/health", {}),
                    ("/api/v1/credits/balance", {"X-API-Key": raw}),
                ):
                    started = time.monotonic()
                    response = client.get(path, headers=headers)
                    slowest = max(slowest, time.monotonic() - started)
                    assert response.status_code == 200, (path, response.text)
                    answered += 1
                time.sleep(0.2)
        closed_idle = sum(_closed_by_server(sock) for sock in idle)
        still_open = sum(not _closed_by_server(sock) for sock in slow + silent)
        with capsys.disabled():
            print(
                f"\nslowloris: {SLOW} trickling + {SILENT} silent connections; {answered} normal "
                f"requests, slowest {slowest:.3f} s; idle keep-alive connections closed "
                f"{closed_idle}/{IDLE} after {KEEP_ALIVE} s; slow connections still open "
                f"{still_open}"
            )
        assert slowest < 1.0, f"a normal client waited {slowest:.2f} s"
        # The one timer this configuration has: idle after a response, closed after keep-alive.
        assert closed_idle == IDLE, f"{IDLE - closed_idle} idle connections outlived keep-alive"
    finally:
        for sock in slow + silent + idle:
            sock.close()


def test_slow_headers_are_closed_by_the_server(slow_server: tuple[Any, str]) -> None:
    server, _ = slow_server
    slow, silent = _open_slow(server.port)
    try:
        deadline = time.monotonic() + HEADER_TIMEOUT + 3
        while time.monotonic() < deadline:
            _trickle(slow, b"a")  # one byte a second per connection, headers never end
            time.sleep(1.0)
        open_slow = sum(not _closed_by_server(sock) for sock in slow)
        open_silent = sum(not _closed_by_server(sock) for sock in silent)
        assert open_slow == 0 and open_silent == 0, (
            f"{open_slow}/{SLOW} trickling and {open_silent}/{SILENT} silent connections still "
            f"open {HEADER_TIMEOUT + 3} s later"
        )
    finally:
        for sock in slow + silent:
            sock.close()


def _answer(port: int, raw: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_slow_headers_get_a_408_json_and_a_bad_request_line_a_400_json(
    slow_server: tuple[Any, str],
) -> None:
    server, _ = slow_server
    started = time.monotonic()
    timed_out = _answer(server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
    assert HEADER_TIMEOUT - 0.5 <= time.monotonic() - started < HEADER_TIMEOUT + 3
    head, _, body = timed_out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head
    assert json.loads(body) == {
        "detail": "The request headers took too long to arrive.",
        "code": "request_timeout",
    }
    for raw in (
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\rb\r\n\r\n",  # CR inside a value
        b"GET /he alth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # a space in the target
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",  # TLS on the plain port
    ):
        head, _, body = _answer(server.port, raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, (raw, head)
        assert json.loads(body)["code"] == "bad_request"
