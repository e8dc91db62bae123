"""The limiter scripts of one turn of the event loop go to Redis as one pipeline
(timepoint_billing/redis_batches.py): the counts stay exact, and a script Redis forgot is
loaded again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.conf import settings as django_settings

from apikeys import limiter_redis, limits
from apikeys.lookup import caller_from_api_key
from timepoint_billing.errors import RateLimited

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        not django_settings.REDIS_URL, reason="needs REDIS_URL (a shared Redis) for this check"
    ),
]


async def _burst(caller: Any, count: int) -> tuple[int, int]:
    """`count` acquires started in one turn of the loop: (admitted, refused with 429)."""

    async def one() -> bool:
        try:
            lease = await limits.acquire(caller, route="/r", spends_credits=False)
        except RateLimited:
            return False
        await lease.release()
        return True

    results = await asyncio.gather(*(one() for _ in range(count)))
    return sum(results), results.count(False)


def _reads_processed() -> int:
    """How many times Redis read from a client socket so far (every client of the server)."""
    return int(limiter_redis.sync_redis().client.info("stats")["total_reads_processed"])


def test_one_turn_of_acquires_is_one_pipeline_and_counts_exactly(user: Any, make_key: Any) -> None:
    _, raw = make_key(
        user, rate_limit_per_minute=1000, rate_limit_per_day=30, concurrency_limit=1000
    )
    caller = caller_from_api_key(raw)

    async def scenario() -> tuple[int, int]:
        await _burst(caller, 1)  # the loop's connection and the script, loaded once
        before = _reads_processed()
        counted = await _burst(caller, 49)
        # 49 scripts as commands of their own: at least 49 reads on Redis's side; in one
        # pipeline a handful (the pipeline, the releases' flush, whatever else the server did).
        assert _reads_processed() - before < 25
        return counted

    assert asyncio.run(scenario()) == (29, 20)


def test_a_script_redis_forgot_is_loaded_again_for_the_whole_batch(
    user: Any, make_key: Any
) -> None:
    _, raw = make_key(
        user, rate_limit_per_minute=1000, rate_limit_per_day=10, concurrency_limit=1000
    )
    caller = caller_from_api_key(raw)

    async def scenario() -> tuple[int, int]:
        await _burst(caller, 1)
        # As after a Redis restart: every script it held is gone (NOSCRIPT for each of the batch).
        await limiter_redis.async_redis().client.script_flush()
        return await _burst(caller, 15)

    assert asyncio.run(scenario()) == (9, 6)
