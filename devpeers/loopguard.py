"""The test suite's event-loop guard: blocking socket I/O on a watched event loop's thread is
recorded as it happens (`blocked`), so a test can fail on it (issue 13 point 6).

An event loop's own sockets are non-blocking (asyncio's transports: timeout 0.0) or never reach
Python at all (uvloop's libuv). A socket call with a timeout of None or > 0 made while a watched
loop runs on this thread waits in the kernel with the loop stopped: every other request of that
worker waits too, for as long as the peer takes (up to the client's socket timeout when it
hangs). That is what a synchronous client (django-redis, redis-py, httpx.Client, requests) does
when it is called from an `async def` without a thread.

The calls are recorded, never refused: the code under test often swallows errors (django-redis
with IGNORE_EXCEPTIONS turns any exception into a cache miss), so raising would hide the very
call the guard is for. A test asserts `blocked` is empty at its end.

What stays outside: libpq (psycopg) does its socket I/O in C, and SQLite is file I/O; Django
itself refuses ORM calls from a running loop (SynchronousOnlyOperation), so database work cannot
slip onto the loop unnoticed either.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import traceback
import weakref
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BlockingCall:
    operation: str  # e.g. "sendall", "recv"
    peer: str
    timeout: float | None
    stack: str  # where the call came from (innermost last)

    def __str__(self) -> str:
        return f"blocking socket.{self.operation} to {self.peer} on the event loop:\n{self.stack}"


blocked: list[BlockingCall] = []
_blocked_lock = threading.Lock()
_watched: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
# The data-moving calls: a blocking client sends its command and waits for the reply with these.
# (`connect` is left to the network guard, and a blocking client never connects without sending.)
OPERATIONS = (
    "send",
    "sendall",
    "sendto",
    "sendmsg",
    "recv",
    "recv_into",
    "recvfrom",
    "recvfrom_into",
    "recvmsg",
)


def _peer(sock: socket.socket) -> str:
    try:
        return repr(sock.getpeername())
    except OSError:
        return "(not connected)"


def _record(sock: socket.socket, operation: str) -> None:
    loop = asyncio._get_running_loop()
    if loop is None or loop not in _watched:
        return
    timeout = sock.gettimeout()
    if timeout == 0.0:
        return  # non-blocking: the loop's own way of doing I/O
    frames = traceback.extract_stack()[:-2]  # without this guard's own two frames
    # The project's frames (where the blocking call was made) and the innermost library ones.
    ours = [
        f
        for f in frames[:-4]
        if "site-packages" not in f.filename and "/asyncio/" not in f.filename
    ]
    stack = "".join(traceback.format_list(ours[-8:] + frames[-4:]))
    with _blocked_lock:
        blocked.append(BlockingCall(operation, _peer(sock), timeout, stack))


def _guarded(operation: str, real: Any) -> Any:
    def call(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        _record(self, operation)
        return real(self, *args, **kwargs)

    call.__name__ = operation
    call._tpb_loopguard = True  # type: ignore[attr-defined]
    return call


def install() -> None:
    """Wrap the socket methods in this process (idempotent)."""
    for operation in OPERATIONS:
        current = getattr(socket.socket, operation)
        if not getattr(current, "_tpb_loopguard", False):
            setattr(socket.socket, operation, _guarded(operation, current))


def installed() -> bool:
    return all(getattr(getattr(socket.socket, op), "_tpb_loopguard", False) for op in OPERATIONS)


def watch(loop: asyncio.AbstractEventLoop) -> None:
    """Record blocking socket calls made while `loop` runs (the gateway's, in tests)."""
    install()
    _watched.add(loop)


def take() -> list[BlockingCall]:
    """The calls recorded so far, forgetting them."""
    with _blocked_lock:
        found = list(blocked)
        blocked.clear()
    return found


def report(found: list[BlockingCall]) -> str:
    """A failure message: how many, and where the first one came from."""
    if not found:
        return "no blocking socket call on a watched event loop"
    return f"{len(found)} blocking socket call(s) on a watched event loop; the first:\n{found[0]}"
