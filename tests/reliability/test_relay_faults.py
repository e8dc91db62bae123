"""The relay with a fault proxy between the gateway and its upstreams: refused, hanging, slow,
cut and abandoned connections each end in a defined answer, and nothing leaks (pool slots,
credit reservations, concurrency leases, usage records)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import assert_json_error, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BALANCE = "/api/v1/credits/balance"
STREAM = "/api/v1/generate/stream"


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(block[len("data: ") :])
        for block in raw.decode().split("\n\n")
        if block.startswith("data: ")
    ]


def _reserved(user: Any) -> int:
    from relay.services import reservation_total

    return reservation_total(user.flash_user_id)


def test_refused_upstream_is_502_json(gateway: Any, auth: Any, flash_proxy: Any) -> None:
    flash_proxy.mode = "refuse"
    response = gateway.get(BALANCE, headers=auth)
    assert_json_error(response, 502, "upstream_unavailable")


def test_refused_clockchain_is_502_json(gateway: Any, auth: Any, clockchain_proxy: Any) -> None:
    clockchain_proxy.mode = "refuse"
    assert_json_error(gateway.get("/api/v1/stats", headers=auth), 502, "upstream_unavailable")


def test_hanging_upstream_is_504_within_the_read_timeout(
    gateway: Any, auth: Any, flash_proxy: Any, settings: Any, flash_peer: Any
) -> None:
    settings.UPSTREAM_READ_TIMEOUT = 0.4
    flash_proxy.mode = "hang"
    started = time.monotonic()
    response = gateway.get(BALANCE, headers=auth)
    elapsed = time.monotonic() - started
    assert_json_error(response, 504, "upstream_timeout")
    assert 0.4 <= elapsed < 1.4, elapsed
    assert flash_peer.requests == []  # the proxy swallowed it: nothing reached Flash


def test_pool_exhausted_is_503_with_retry_after(
    gateway: Any, auth: Any, flash_proxy: Any, settings: Any, flash_peer: Any
) -> None:
    settings.UPSTREAM_POOL_SIZE = 1
    settings.UPSTREAM_POOL_TIMEOUT = 0.2
    flash_proxy.mode = "delay"
    flash_proxy.delay_seconds = 1.0
    results: list[httpx.Response] = []

    def call() -> None:
        with httpx.Client(base_url=str(gateway.base_url), timeout=10, trust_env=False) as client:
            results.append(client.get(BALANCE, headers=auth))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 503, 503], statuses
    for busy in (r for r in results if r.status_code == 503):
        assert_json_error(busy, 503, "upstream_busy")
        assert busy.headers["Retry-After"] == "1"
    assert len(flash_peer.requests_to(BALANCE)) == 1


def test_stream_cut_by_the_network_ends_with_an_error_event_and_a_partial_record(
    gateway: Any, auth: Any, flash_peer: Any, flash_proxy: Any, settings: Any, user: Any, usage: Any
) -> None:
    settings.RELAY_STREAM_SETTLE_SECONDS = 0.2
    flash_peer.stream_step_delay = 0.1
    # Costs and balance answers (compact JSON) pass; the stream is cut right after its first
    # event, in the middle of the chunked body, as a dropped network path would.
    flash_proxy.mode = "cut"
    flash_proxy.cut_after_marker = b"\n\n"
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_raw())
    events = _events(raw)
    assert events, raw
    assert events[-1]["event"] == "error", events
    wait_for(lambda: len(usage()) == 1)
    (row,) = usage()
    assert (row.endpoint, row.status, row.partial, row.credits_spent) == (STREAM, 200, True, 0)
    wait_for(lambda: _reserved(user) == 0)


def test_stream_closed_cleanly_before_done_still_ends_with_an_error_event(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any, settings: Any
) -> None:
    """Flash dropping its own connection before its final event: the client still learns."""
    settings.RELAY_STREAM_SETTLE_SECONDS = 0.2
    flash_peer.stream_cut_after = 2
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        try:
            raw = b"".join(response.iter_raw())
        except httpx.HTTPError:
            raw = b""
    events = _events(raw)
    assert events and events[-1]["event"] == "error", events
    wait_for(lambda: len(usage()) == 1)
    assert usage()[0].partial is True


def test_client_disconnect_closes_the_upstream_connection_within_a_second(
    gateway: Any, auth: Any, flash_peer: Any, flash_proxy: Any, user: Any, usage: Any
) -> None:
    flash_peer.stream_step_delay = 1.0
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        for chunk in response.iter_raw():
            if b"data: " in chunk:
                break
        before = len(flash_proxy.upstream_closed_at)
        closed_at = time.monotonic()
    wait_for(lambda: len(flash_proxy.upstream_closed_at) > before, timeout=2)
    assert flash_proxy.upstream_closed_at[-1] - closed_at < 1.0
    wait_for(lambda: len(usage()) == 1)
    assert usage()[0].partial is True


# --- A client that goes away before the stream's first byte


class _SlowHeaders:
    """The gateway app behind a slow network: the response head of a stream is written late
    (uvicorn's `send` waits for the socket to drain). A client that leaves meanwhile cancels the
    request after the view returned and before the body started."""

    def __init__(self, app: Any, delay: float) -> None:
        self.app = app
        self.delay = delay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def slow_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and scope.get("path") == STREAM:
                await asyncio.sleep(self.delay)
            await send(message)

        await self.app(scope, receive, slow_send)


@pytest.fixture(scope="module")
def _slow_headers_server() -> Iterator[Any]:
    from devpeers.server import start_peer
    from timepoint_billing.asgi import application

    running = start_peer(_SlowHeaders(application, delay=1.0))
    yield running
    running.stop()


def test_disconnect_before_the_first_byte_releases_everything(
    _slow_headers_server: Any,
    transactional_db: Any,
    auth: Any,
    flash_peer: Any,
    flash_proxy: Any,
    user: Any,
    usage: Any,
    settings: Any,
) -> None:
    """Regression: the stream's generator never started, so its cleanup never ran: the Flash
    response stayed open (a pool slot lost for good), the credit reservation and busy marker
    lived until their TTL (~6 min) and no usage record was written."""
    from upstreams.flash_credit_lock import flash_user_busy_key

    settings.RELAY_STREAM_SETTLE_SECONDS = 0.1
    flash_peer.stream_step_delay = 5.0  # Flash keeps the stream open
    host, port = _slow_headers_server.url.removeprefix("http://").split(":")
    body = json.dumps({"query": "Apollo 11"}).encode()
    head = (
        f"POST {STREAM} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + body)
        wait_for(lambda: flash_peer.active_streams == 1, timeout=3)
        closed_at = time.monotonic()
    # The proxy sees the gateway close its upstream leg.
    wait_for(lambda: flash_proxy.upstream_closed_at, timeout=3)
    assert flash_proxy.upstream_closed_at[-1] - closed_at < 2.0
    wait_for(lambda: _reserved(user) == 0, timeout=3)
    from django.core.cache import cache

    wait_for(lambda: not cache.get(flash_user_busy_key(user.flash_user_id)), timeout=3)
    wait_for(lambda: len(usage()) == 1, timeout=3)
    (row,) = usage()
    assert (row.endpoint, row.partial) == (STREAM, True)
