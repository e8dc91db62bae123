"""The test suite's network guard: outbound connections to anything but loopback are refused
before any packet leaves, and each refusal is remembered (`refused`) so a test can prove it.

Two layers, because an event loop can connect without `socket.socket.connect`:
- `socket.socket.connect` / `connect_ex`: blocking clients (httpx, redis-py) and asyncio's own
  loop, whose `sock_connect` and `create_connection` end in `sock.connect()`;
- uvloop's `Loop.create_connection` and `Loop.sock_connect`: uvloop connects in libuv (C), so
  `asyncio.open_connection` (redis.asyncio, anyio/httpx) on a uvloop loop never calls the patched
  method. The host is resolved first and every address it resolves to must be loopback.

What stays outside: subprocesses (gunicorn, `manage.py` workers) do not import this, and libpq
(psycopg) connects in C: the database host comes from DATABASE_URL, loopback in CI.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

refused: list[Any] = []  # addresses refused so far, oldest first (tests clear it as they need)
_refused_lock = threading.Lock()

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class NetworkGuardError(OSError):
    """A test tried to reach a non-loopback address."""


def is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # unix sockets (the local PostgreSQL socket) stay on this machine
    return is_loopback_host(str(address[0]))


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def refuse(address: Any) -> NetworkGuardError:
    with _refused_lock:
        refused.append(address)
    return NetworkGuardError(f"test tried to reach {address!r}: only loopback is allowed in tests")


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not is_loopback(address):
        raise refuse(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not is_loopback(address):
        raise refuse(address)
    return _real_connect_ex(self, address)


async def _check_resolved(loop: Any, host: Any, port: Any) -> None:
    if host is None:
        return  # create_connection(sock=...): that socket connected through a guarded path
    if is_loopback_host(str(host)):
        return
    try:
        ipaddress.ip_address(str(host).strip("[]"))
    except ValueError:
        # A name: every address it resolves to must be loopback (resolution itself is allowed,
        # as for the socket-level guard).
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        bad = [info[4] for info in infos if not is_loopback(info[4])]
        if not bad and infos:
            return
    raise refuse((host, port))


def _guard_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    loop_class: Any = uvloop.Loop
    if getattr(loop_class, "_tpb_guarded", False):
        return True
    real_create_connection = loop_class.create_connection
    real_sock_connect = loop_class.sock_connect

    async def create_connection(
        self: Any, protocol_factory: Any, host: Any = None, port: Any = None, **kwargs: Any
    ) -> Any:
        await _check_resolved(self, host, port)
        return await real_create_connection(self, protocol_factory, host, port, **kwargs)

    async def sock_connect(self: Any, sock: socket.socket, address: Any) -> Any:
        if not is_loopback(address):
            raise refuse(address)
        return await real_sock_connect(self, sock, address)

    loop_class.create_connection = create_connection
    loop_class.sock_connect = sock_connect
    loop_class._tpb_guarded = True
    return True


def install() -> None:
    """Guard this process (idempotent)."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign,assignment]
    _guard_uvloop()


def installed() -> bool:
    """Both layers are in place (a test checks this before it tries a non-loopback address)."""
    socket_layer = (
        socket.socket.connect is _guarded_connect  # type: ignore[comparison-overlap]
        and socket.socket.connect_ex is _guarded_connect_ex  # type: ignore[comparison-overlap]
    )
    try:
        import uvloop
    except ImportError:
        return socket_layer
    return socket_layer and bool(getattr(uvloop.Loop, "_tpb_guarded", False))
