"""No blocking I/O on the event loop in the relay path (issue 13 point 6, SECURITY.md).

The gateway serves every relay route from one event loop per worker: a synchronous Redis call
made there stops every request of that worker for as long as Redis takes to answer (up to the
socket timeout when it hangs). Here every relay route runs with Redis behind the limiter, the
Clockchain response cache (on), Flash's cost table and the credit reservations — the shared
cache of production — and the event-loop guard (`devpeers/loopguard.py`, armed for every relay
test by `relay/tests/conftest.py`) fails the test on any blocking socket call made on the
gateway's loop. Each route is called twice, so both a cache miss (read, then write) and a hit
are covered. (The guard would also fail these tests at teardown; they assert it themselves so
the failure reads as what it is.)

Redis: REDIS_URL's server when it is set (CI), else one on 127.0.0.1:6379 (db 11, as the Redis
fault tests), else skipped; keys carry this process's own prefix."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from devpeers import loopguard
from devpeers.clockchain import CAESAR
from relay.services import reservation_total
from tests.reliability.conftest import any_redis_url, redis_caches, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def shared_cache(settings: Any) -> Iterator[str]:
    """The gateway on Redis for everything (limiter and Django cache), the Clockchain cache on."""
    url = any_redis_url()
    if url is None:
        pytest.skip("needs a Redis server (REDIS_URL or 127.0.0.1:6379)")
    prefix = f"tpb-loop-{os.getpid()}"
    settings.REDIS_URL = url
    settings.CACHES = redis_caches(settings, url, prefix)
    settings.CLOCKCHAIN_CACHE_SECONDS = 10.0
    settings.RELAY_STREAM_SETTLE_SECONDS = 0.2
    yield url
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_guard_is_armed(_gateway_server: Any) -> None:
    """The guard this module relies on is in place for the gateway's loop."""
    assert loopguard.installed()
    assert _gateway_server.loop in loopguard._watched


def test_clockchain_reads_with_the_cache_on(
    shared_cache: str, gateway: Any, auth: Any, clockchain_peer: Any
) -> None:
    routes = [
        "/api/v1/moments?limit=3",
        f"/api/v1/moments{CAESAR}",
        "/api/v1/browse",
        "/api/v1/browse/-44/march",
        "/api/v1/today",
        "/api/v1/random",
        "/api/v1/search?q=caesar",
        f"/api/v1/graph/neighbors{CAESAR}",
        "/api/v1/stats",
    ]
    for route in routes:
        for _ in range(2):
            response = gateway.get(route, headers=auth)
            assert response.status_code == 200, (route, response.text)
            assert "X-RateLimit-Limit" in response.headers, route  # the limiter used Redis
    # The second round came from the cache: Clockchain saw each cacheable read once.
    assert len(clockchain_peer.requests_to("/api/v1/moments")) == 2  # the list and the detail
    assert len(clockchain_peer.requests_to("/api/v1/search")) == 1
    found = loopguard.take()
    assert not found, loopguard.report(found)


def test_credits_and_generations_on_redis(
    shared_cache: str, gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    for route in ("/api/v1/credits/balance", "/api/v1/credits/history", "/api/v1/credits/costs"):
        for _ in range(2):
            response = gateway.get(route, headers=auth)
            assert response.status_code == 200, (route, response.text)
    assert len(flash_peer.requests_to("/api/v1/credits/costs")) == 1  # cached in Redis

    generated = gateway.post("/api/v1/generate", json={"query": "Apollo 11"}, headers=auth)
    assert generated.status_code == 200, generated.text
    timepoint_id = generated.json()["id"]

    with gateway.stream(
        "POST", "/api/v1/generate/stream", json={"query": "Apollo 11"}, headers=auth
    ) as streamed:
        assert streamed.status_code == 200
        assert b'"event": "done"' in b"".join(streamed.iter_raw())

    started = gateway.post("/api/v1/generate/async", json={"query": "Apollo 11"}, headers=auth)
    assert started.status_code == 202, started.text

    assert gateway.get(f"/api/v1/timepoints/{timepoint_id}", headers=auth).status_code == 200
    assert gateway.get("/api/v1/timepoints/mine", headers=auth).status_code == 200
    published = gateway.patch(
        f"/api/v1/timepoints/{timepoint_id}/visibility",
        json={"visibility": "private"},
        headers=auth,
    )
    assert published.status_code == 200, published.text
    flash_peer.set_balance(user.flash_user_id, 0)
    refused = gateway.post("/api/v1/generate", json={"query": "Apollo 11"}, headers=auth)
    assert refused.status_code == 402, refused.text
    # The stream's reservation is given back on the loop after RELAY_STREAM_SETTLE_SECONDS (a
    # timer): that late call is covered too, once it has run.
    wait_for(lambda: reservation_total(user.flash_user_id) == 0, timeout=10)
    found = loopguard.take()
    assert not found, loopguard.report(found)
