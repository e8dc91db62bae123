"""A response leaves the production server (gunicorn + GatewayUvicornWorker) as one TCP segment:
its head is written with its body (timepoint_billing/server.py `HeadWithBody`), where uvicorn
wrote them apart. Counted by the client's kernel: TCP_INFO's `tcpi_data_segs_in`, the segments
that carried data, whatever the client's reads saw."""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO's layout is Linux's"),
]

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in is the u32 at byte 152 (Linux >= 4.6).
DATA_SEGS_IN = 152


def _data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, DATA_SEGS_IN)[0])


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request and read its whole answer (Content-Length framed)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_each_answer_is_one_data_segment(
    production_gateway: Any, flash_peer: Any, clockchain_peer: Any, user: Any, make_key: Any
) -> None:
    _, raw = make_key(user, rate_limit_per_minute=10_000, concurrency_limit=100)
    server = production_gateway({"LOG_LEVEL": "WARNING"})
    requests = [
        f"GET /api/v1/browse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {raw}\r\n\r\n",
        "GET /api/v1/browse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # 401 from the relay
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "GET /api/v1/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # 404 from Django's stack
    ]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for request in requests:
            before = _data_segments_in(sock)
            head = _exchange(sock, request.encode())
            assert head.startswith(b"HTTP/1.1 ")
            assert _data_segments_in(sock) - before == 1, (request.split("\r\n")[0], head)
