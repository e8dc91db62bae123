"""Fixtures for the peers' own tests: no Django, one loopback server per peer type per session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devpeers.clockchain import ClockchainPeer
from devpeers.flash import FlashPeer
from devpeers.server import RunningPeer, start_peer


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """Overrides the suite-wide Django cache fixture: these tests never touch Django."""
    yield


class Switch:
    """Forwards to the peer the current test installed (fresh state per test, one server)."""

    def __init__(self) -> None:
        self.target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


@pytest.fixture(scope="session")
def _flash_running() -> Iterator[tuple[Switch, RunningPeer]]:
    switch = Switch()
    running = start_peer(switch)
    yield switch, running
    running.stop()


@pytest.fixture(scope="session")
def _clockchain_running() -> Iterator[tuple[Switch, RunningPeer]]:
    switch = Switch()
    running = start_peer(switch)
    yield switch, running
    running.stop()


@pytest.fixture
def flash(_flash_running: tuple[Switch, RunningPeer]) -> FlashPeer:
    switch, running = _flash_running
    peer = FlashPeer()
    peer.url = running.url
    switch.target = peer
    return peer


@pytest.fixture
def clockchain(_clockchain_running: tuple[Switch, RunningPeer]) -> ClockchainPeer:
    switch, running = _clockchain_running
    peer = ClockchainPeer()
    peer.url = running.url
    switch.target = peer
    return peer
