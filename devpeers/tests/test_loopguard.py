"""The event-loop guard (`devpeers/loopguard.py`) itself: it records a blocking socket call made
on a watched loop, and nothing else (the relay's no-blocking-I/O test relies on both)."""

from __future__ import annotations

import asyncio
import socket

from devpeers import loopguard


def _exchange(*, blocking: bool) -> None:
    """One send and one receive over a socket pair, on the calling thread."""
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(blocking)
        right.setblocking(blocking)
        left.sendall(b"x")
        assert right.recv(1) == b"x"


def test_a_blocking_call_on_a_watched_loop_is_recorded() -> None:
    loopguard.take()

    async def on_the_loop() -> None:
        loopguard.watch(asyncio.get_running_loop())
        _exchange(blocking=True)

    asyncio.run(on_the_loop())
    found = loopguard.take()
    assert [call.operation for call in found] == ["sendall", "recv"]
    assert "_exchange" in found[0].stack  # says where the call was made
    assert "blocking socket call" in loopguard.report(found)


def test_what_the_guard_lets_through() -> None:
    """Non-blocking sockets on a watched loop (the loop's own way), and blocking ones on an
    unwatched loop or off any loop (a thread, a sync test)."""
    loopguard.install()
    loopguard.take()

    async def watched_non_blocking() -> None:
        loopguard.watch(asyncio.get_running_loop())
        _exchange(blocking=False)

    async def unwatched() -> None:
        _exchange(blocking=True)

    asyncio.run(watched_non_blocking())
    asyncio.run(unwatched())
    _exchange(blocking=True)
    assert loopguard.take() == []
    assert loopguard.installed()
