"""The limiter: windows, concurrency leases, TTLs, headers and the Redis-down policy."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client

from apikeys import lease_releases, limiter_redis, limits
from apikeys.key_stops import key_stops_at
from apikeys.lookup import caller_from_api_key
from timepoint_billing.callers import Caller
from timepoint_billing.errors import RateLimited, ServiceUnavailable, Unauthenticated

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
needs_redis = pytest.mark.skipif(
    not django_settings.REDIS_URL, reason="needs REDIS_URL (a shared Redis) for this check"
)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _caller(make_key: Any, user: Any, **limit_fields: Any) -> Caller:
    _, raw = make_key(user, **limit_fields)
    return caller_from_api_key(raw)


def test_minute_window_429_with_headers(client: Client, user: Any, make_key: Any) -> None:
    _, raw = make_key(user)
    auth = {"HTTP_X_API_KEY": raw}
    statuses = [client.get("/api/v1/keys", **auth).status_code for _ in range(10)]
    assert statuses == [200] * 10
    response = client.get("/api/v1/keys", **auth)
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "rate_limited" and body["limit"] == "minute"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response["X-RateLimit-Limit"] == "10"
    assert response["X-RateLimit-Remaining"] == "0"
    assert int(response["X-RateLimit-Reset"]) > time.time()
    assert response["RateLimit"].startswith('"minute";r=0;')
    assert "RateLimit-Policy" in response


def test_day_window(user: Any, make_key: Any) -> None:
    caller = _caller(make_key, user, rate_limit_per_day=3)
    for _ in range(3):
        limits.acquire_sync(caller, route="/t", spends_credits=False).release_sync()
    with pytest.raises(RateLimited) as raised:
        limits.acquire_sync(caller, route="/t", spends_credits=False)
    assert raised.value.extra == {"limit": "day"}
    assert raised.value.headers["X-RateLimit-Limit"] == "3"
    assert int(raised.value.headers["Retry-After"]) <= 86400


def test_concurrency_lease_released_and_expires(user: Any, make_key: Any) -> None:
    caller = _caller(make_key, user)  # free: 1 concurrent
    lease = limits.acquire_sync(caller, route="/t", spends_credits=False)
    with pytest.raises(RateLimited) as raised:
        limits.acquire_sync(caller, route="/t", spends_credits=False)
    assert raised.value.extra == {"limit": "concurrency"}
    lease.release_sync()
    lease.release_sync()  # idempotent
    # A lease nobody releases (a dead worker) stops counting after its lease time.
    limits.acquire_sync(caller, route="/t", spends_credits=False, lease_seconds=0.3)
    time.sleep(0.4)
    limits.acquire_sync(caller, route="/t", spends_credits=False).release_sync()


def test_lease_released_when_the_client_goes_away(user: Any, make_key: Any) -> None:
    caller = _caller(make_key, user)

    async def scenario() -> None:
        started = asyncio.Event()

        async def stream() -> None:
            async with await limits.acquire(caller, route="/s", spends_credits=False) as lease:
                started.set()
                assert await lease.renew(30)
                await asyncio.sleep(60)  # a long stream; the client disconnects

        task = asyncio.create_task(stream())
        await started.wait()
        with pytest.raises(RateLimited):
            await limits.acquire(caller, route="/s", spends_credits=False)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        lease = await limits.acquire(caller, route="/s", spends_credits=False)
        await lease.release()

    asyncio.run(scenario())


def test_session_callers_get_the_user_limits(
    client: Client, auth_headers: dict[str, Any], settings: Any
) -> None:
    settings.USER_RATE_LIMIT_PER_MINUTE = 2
    assert client.get("/api/v1/keys", **auth_headers)["X-RateLimit-Limit"] == "2"
    assert client.get("/api/v1/keys", **auth_headers).status_code == 200
    assert client.get("/api/v1/keys", **auth_headers).status_code == 429


def test_redis_down_reads_fail_open_spends_fail_closed(
    client: Client, user: Any, make_key: Any, settings: Any
) -> None:
    _, raw = make_key(user)
    caller = caller_from_api_key(raw)
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/2"
    settings.REDIS_SOCKET_TIMEOUT = 0.05
    started = time.monotonic()
    lease = limits.acquire_sync(caller, route="/t", spends_credits=False)
    assert lease.backend == "none" and lease.headers == {}
    lease.release_sync()
    with pytest.raises(ServiceUnavailable) as raised:
        limits.acquire_sync(caller, route="/t", spends_credits=True)
    assert raised.value.code == "limiter_unavailable"
    assert raised.value.headers["Retry-After"] == "1"

    async def async_path() -> None:
        limiter_redis.reset_breaker()
        read = await limits.acquire(caller, route="/t", spends_credits=False)
        assert read.backend == "none"
        await read.release()
        with pytest.raises(ServiceUnavailable):
            await limits.acquire(caller, route="/t", spends_credits=True)

    asyncio.run(async_path())
    # Served over HTTP too (keys endpoints are reads), within the bounded time.
    assert client.get("/api/v1/keys", HTTP_X_API_KEY=raw).status_code == 200
    assert time.monotonic() - started < 1.0


@needs_redis
def test_every_limiter_key_has_a_ttl(user: Any, make_key: Any) -> None:
    caller = _caller(make_key, user, concurrency_limit=5)
    held = limits.acquire_sync(caller, route="/t", spends_credits=False, lease_seconds=120)
    limits.acquire_sync(caller, route="/t", spends_credits=False).release_sync()
    client = limiter_redis.sync_redis().client
    keys = list(client.scan_iter(match="rl:*"))
    assert len(keys) == 3  # minute window, day window, lease set
    for key in keys:
        ttl = client.ttl(key)
        assert ttl > 0, key
    assert client.ttl(f"rl:{{k{caller.api_key.pk}}}:c") >= 119  # type: ignore[union-attr]
    held.release_sync()


_HOLDER = """
import os, sys, time, asyncio
import django
django.setup()
from timepoint_billing.callers import Caller
from accounts.models import User
from apikeys.models import APIKey
from apikeys import lease_releases, limiter_redis, limits
from apikeys.key_stops import key_stops_at
user = User(pk=int(sys.argv[1]))
key = APIKey(pk=int(sys.argv[2]), user=user, tier="free")
caller = Caller(user=user, kind="api_key", tier="free", api_key=key)
async def main():
    await limits.acquire(caller, route="/hold", spends_credits=False, lease_seconds=2)
    print("held", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.slow
@needs_redis
def test_lease_of_a_killed_worker_expires(user: Any, make_key: Any) -> None:
    key, raw = make_key(user)
    caller = caller_from_api_key(raw)
    env = {**os.environ, "REDIS_URL": django_settings.REDIS_URL, "PYTHONPATH": str(ROOT)}
    env["DJANGO_SETTINGS_MODULE"] = "timepoint_billing.settings"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(user.pk), str(key.pk)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(5)
        with pytest.raises(RateLimited) as raised:
            limits.acquire_sync(caller, route="/t", spends_credits=False)
        assert raised.value.extra == {"limit": "concurrency"}
        deadline = time.monotonic() + 4
        while True:
            try:
                limits.acquire_sync(caller, route="/t", spends_credits=False).release_sync()
                break
            except RateLimited:
                assert time.monotonic() < deadline, "the dead worker's lease never expired"
                time.sleep(0.2)
    finally:
        if holder.poll() is None:
            holder.kill()


@needs_redis
def test_a_full_redis_pool_waits_instead_of_failing_open(
    user: Any, make_key: Any, settings: Any
) -> None:
    """More concurrent requests on one loop than pooled connections: they queue for a connection
    (bounded by REDIS_SOCKET_TIMEOUT) and are all counted, instead of the pool raising at once and
    the breaker treating a burst as an outage (reads unlimited, credit-spending calls 503)."""
    settings.REDIS_MAX_CONNECTIONS = 2
    settings.REDIS_SOCKET_TIMEOUT = 2.0
    caller = _caller(make_key, user, rate_limit_per_minute=1000, concurrency_limit=1000)
    limiter_redis.reset_breaker()

    async def burst() -> list[limits.Lease]:
        leases = await asyncio.gather(
            *[limits.acquire(caller, route="/b", spends_credits=True) for _ in range(60)]
        )
        for lease in leases:
            await lease.release()
        return list(leases)

    leases = asyncio.run(burst())
    assert {lease.backend for lease in leases} == {"redis"}
    assert leases[-1].headers and limiter_redis.redis_available()


# --- Releases without a round trip of their own (apikeys.lease_releases, issue 17)


def _held(caller: Caller) -> int:
    """Leases Redis counts for the caller now."""
    return int(limiter_redis.sync_redis().client.zcard(f"rl:{{k{caller.api_key.pk}}}:c"))  # type: ignore[union-attr]


@needs_redis
def test_a_release_rides_with_the_next_acquire_of_its_subject(user: Any, make_key: Any) -> None:
    caller = _caller(make_key, user, concurrency_limit=2)

    async def scenario() -> None:
        for _ in range(4):
            lease = await limits.acquire(caller, route="/r", spends_credits=False)
            assert not lease.took_last_slot
            await lease.release()
            # Queued, not sent: this loop has not run since (no round trip awaited). The next
            # acquire's script frees it before counting, so one slot is held at a time.
            assert _held(caller) == 1
        await lease_releases.flush()
        assert _held(caller) == 0

    asyncio.run(scenario())


@needs_redis
def test_the_last_slot_is_free_before_the_answer_leaves(user: Any, make_key: Any) -> None:
    """A free key (1 concurrent) whose client waits for each answer, then asks again, maybe
    through another worker: its slot is free in Redis when `release` returns."""
    caller = _caller(make_key, user)

    async def scenario() -> None:
        for _ in range(3):
            lease = await limits.acquire(caller, route="/r", spends_credits=False)
            assert lease.took_last_slot
            await lease.release()
            assert _held(caller) == 0

    asyncio.run(scenario())


@needs_redis
def test_a_queued_release_reaches_redis_without_another_request(user: Any, make_key: Any) -> None:
    caller = _caller(make_key, user, concurrency_limit=5)

    async def scenario() -> None:
        leases = [await limits.acquire(caller, route="/r", spends_credits=False) for _ in range(3)]
        for lease in leases:
            await lease.release()
        deadline = time.monotonic() + 5
        while _held(caller):
            assert time.monotonic() < deadline, "the queued releases were never sent"
            await asyncio.sleep(0.01)

    asyncio.run(scenario())


@needs_redis
def test_a_refused_acquire_still_frees_what_it_carried(user: Any, make_key: Any) -> None:
    """A key revoked between two requests: the second is refused (401), and the first one's slot,
    which the refused script carried, is free all the same."""
    key, raw = make_key(user, concurrency_limit=2)
    caller = caller_from_api_key(raw)

    async def scenario() -> None:
        lease = await limits.acquire(caller, route="/r", spends_credits=False)
        await lease.release()
        assert _held(caller) == 1  # queued
        key_stops_at(key_id=key.pk, moment=time.time() - 1)
        with pytest.raises(Unauthenticated):
            await limits.acquire(caller, route="/r", spends_credits=False)
        assert _held(caller) == 0

    asyncio.run(scenario())
