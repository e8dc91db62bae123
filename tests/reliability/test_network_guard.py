"""The suite's outbound-connection guard (`devpeers/netguard.py`, installed by the root
conftest) holds for the gateway itself: the in-process server runs on uvloop, which connects in
libuv rather than through `socket.socket.connect`, so the guard also wraps the loop's connects.

Each case points one of the gateway's upstreams at 10.255.255.1 (never reached: the guard refuses
before the connect system call, and the test checks the guard is in place before it asks)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devpeers import netguard
from tests.reliability.conftest import assert_json_error

pytestmark = pytest.mark.django_db(transaction=True)

OUTSIDE = ("10.255.255.1", 9)


@pytest.fixture
def guard(_gateway_server: Any) -> Iterator[list[Any]]:
    # Refuse to try at all unless both layers are in place: otherwise a SYN would leave.
    assert netguard.installed(), "the network guard is not installed"
    netguard.refused.clear()
    yield netguard.refused
    netguard.refused.clear()


def test_the_gateway_loop_is_one_the_guard_covers(_gateway_server: Any) -> None:
    loop = type(_gateway_server.loop)
    # uvloop (production's loop) or asyncio's own: both are guarded.
    assert loop.__module__.startswith(("uvloop", "asyncio")), loop


def test_upstream_on_a_non_loopback_address_is_refused(
    gateway: httpx.Client, auth: dict[str, str], settings: Any, guard: list[Any]
) -> None:
    settings.CLOCKCHAIN_URL = "http://{}:{}".format(*OUTSIDE)
    started = time.monotonic()
    response = gateway.get("/api/v1/browse", headers=auth)
    # A real connect to an unroutable address would hang until the connect timeout.
    assert time.monotonic() - started < 2.0
    assert_json_error(response, 502, "upstream_unavailable")
    assert OUTSIDE in guard


def test_redis_on_a_non_loopback_address_is_refused(
    gateway: httpx.Client, auth: dict[str, str], settings: Any, guard: list[Any]
) -> None:
    """redis.asyncio connects with `asyncio.open_connection`, i.e. the loop's own
    `create_connection`: under uvloop that never touches `socket.socket.connect`."""
    from apikeys.limiter_redis import reset_breaker

    settings.REDIS_URL = "redis://{}:{}/0".format(*OUTSIDE)
    reset_breaker()
    response = gateway.get("/api/v1/credits/balance", headers=auth)
    assert response.status_code == 200, response.text  # a read fails open (SECURITY.md)
    assert "X-RateLimit-Limit" not in response.headers
    assert OUTSIDE in guard
    reset_breaker()


def test_loop_connects_outside_loopback_are_refused(guard: list[Any]) -> None:
    """Both loop entry points, on a uvloop loop of the test's own."""
    uvloop = pytest.importorskip("uvloop")

    async def connect() -> None:
        with pytest.raises(netguard.NetworkGuardError):
            await asyncio.open_connection(*OUTSIDE)  # loop.create_connection
        with socket.socket() as sock, pytest.raises(netguard.NetworkGuardError):
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, OUTSIDE)

    uvloop.run(connect())
    assert guard == [OUTSIDE, OUTSIDE]
