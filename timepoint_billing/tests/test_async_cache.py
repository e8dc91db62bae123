"""The shared cache from async code (`timepoint_billing/async_cache.py`): the same keys and values
as Django's sync cache, both ways, on Redis and in process; and its failure rules when Redis is
refused (a miss, a skipped write, `CacheUnavailable` for a script)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import cache

from devpeers.faultproxy import FaultProxy
from tests.reliability.conftest import any_redis_url, redis_caches
from timepoint_billing import async_cache

COUNTER_LUA = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def on_redis(settings: Any) -> Iterator[str]:
    url = any_redis_url()
    if url is None:
        pytest.skip("needs a Redis server (REDIS_URL or 127.0.0.1:6379)")
    prefix = f"tpb-acache-{os.getpid()}"
    settings.CACHES = redis_caches(settings, url, prefix)
    yield url
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def _both_ways() -> None:
    value = {"costs": {"generate_hd": 10}, "text": "é", "items": [1, 2.5, None]}

    async def written_async() -> Any:
        await async_cache.set("acache:a", value, 30)
        return await async_cache.get("acache:b")

    cache.set("acache:b", [value, 7], 30)
    assert asyncio.run(written_async()) == [value, 7]  # sync → async
    assert cache.get("acache:a") == value  # async → sync
    assert asyncio.run(async_cache.get("acache:missing")) is None


def test_in_process_cache_both_ways(settings: Any) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert async_cache.redis_location() is None
    _both_ways()


def test_redis_both_ways_and_counters(on_redis: str) -> None:
    assert async_cache.redis_location() == on_redis
    _both_ways()

    async def counted() -> list[Any]:
        first = await async_cache.script(COUNTER_LUA, keys=["acache:n"], args=[5], patience=5)
        second = await async_cache.script(COUNTER_LUA, keys=["acache:n"], args=[-2], patience=5)
        return [first, second]

    assert asyncio.run(counted()) == [5, 3]
    assert cache.get("acache:n") == 3  # django-redis reads the script's plain integer
    assert cache.incr("acache:n", 1) == 4


def test_the_reads_of_one_turn_of_the_loop_are_one_pipeline(on_redis: str) -> None:
    """30 requests reading the cache at once: each gets its own value (or None), and Redis
    reads a handful of times, not 30 (timepoint_billing/redis_batches.py)."""
    for n in range(0, 30, 2):
        cache.set(f"acache:batch:{n}", {"n": n}, 30)
    client = redis.Redis.from_url(on_redis)

    async def read_all() -> tuple[list[Any], int]:
        await async_cache.get("acache:batch:0")  # the loop's connection, opened once
        before = int(client.info("stats")["total_reads_processed"])
        values = await asyncio.gather(*(async_cache.get(f"acache:batch:{n}") for n in range(30)))
        return list(values), int(client.info("stats")["total_reads_processed"]) - before

    values, reads = asyncio.run(read_all())
    assert values == [{"n": n} if n % 2 == 0 else None for n in range(30)]
    assert reads < 15


def test_undecodable_value_is_a_miss(on_redis: str) -> None:
    redis.Redis.from_url(on_redis).set(async_cache.make_key("acache:junk"), b"\x80not-a-pickle")
    assert asyncio.run(async_cache.get("acache:junk")) is None


def test_refused_redis(settings: Any) -> None:
    """Redis refusing connections: reads miss, writes are skipped, a script raises."""
    proxy = FaultProxy("127.0.0.1", 6379).start()
    proxy.mode = "refuse"
    try:
        settings.CACHES = redis_caches(settings, f"redis://127.0.0.1:{proxy.port}/11", "tpb-x")

        async def scenario() -> Any:
            await async_cache.set("acache:a", 1, 30)
            assert await async_cache.get("acache:a") is None
            with pytest.raises(async_cache.CacheUnavailable):
                await async_cache.script(COUNTER_LUA, keys=["acache:n"], args=[1], patience=5)

        asyncio.run(scenario())
    finally:
        proxy.stop()
