"""The relay's pooled upstream sessions (upstreams/http.py): one per event loop, closed with it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from upstreams import clockchain


def test_a_pool_is_closed_when_its_event_loop_shuts_down(clockchain_peer: Any) -> None:
    async def call() -> Any:
        response = await clockchain.acall("GET", "/health", with_key=False)
        assert response.status_code == 200
        return clockchain.CLOCKCHAIN._pools[asyncio.get_running_loop()].session

    session = asyncio.run(call())  # as uvicorn's loop (and asgiref's per-call loops) end
    assert session.closed


def test_a_changed_upstream_url_gets_a_new_pool_and_the_old_one_is_closed(
    clockchain_peer: Any, settings: Any
) -> None:
    async def call() -> tuple[Any, Any]:
        await clockchain.acall("GET", "/health", with_key=False)
        first = clockchain.CLOCKCHAIN._pools[asyncio.get_running_loop()].session
        settings.CLOCKCHAIN_URL = clockchain_peer.url.replace("127.0.0.1", "localhost")
        await clockchain.acall("GET", "/health", with_key=False)
        second = clockchain.CLOCKCHAIN._pools[asyncio.get_running_loop()].session
        await asyncio.sleep(0.05)  # the old pool closes in the background
        return first, second

    first, second = asyncio.run(call())
    assert first is not second and first.closed and second.closed


def test_an_unreachable_upstream_is_our_502(settings: Any) -> None:
    from timepoint_billing.errors import UpstreamUnavailable

    settings.CLOCKCHAIN_URL = "http://127.0.0.1:9"  # discard port: nothing listens

    async def call() -> None:
        await clockchain.acall("GET", "/api/v1/browse")

    with pytest.raises(UpstreamUnavailable):
        asyncio.run(call())
