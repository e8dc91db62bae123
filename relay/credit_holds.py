"""Credit holds: what generations in flight hold of a user's balance, in the shared cache.

Flash loses concurrent updates (upstreams.md pitfall 11), so before a generation reaches it the
gateway *reserves* its cost: one counter per Flash user, raised atomically and compared with the
balance Flash reported, so N parallel requests with credits for one admit exactly one, across
processes. The same step marks the user busy for the grant worker and backs off while a grant
holds the user's credits (`upstreams.flash_credit_lock`, the two-sided lock grants take too); a
generation then waits (bounded, then 503 `credits_busy`) for the grant. Both counters carry a TTL
longer than any generation can run, so a killed worker cannot leak them.

With Redis the whole step is one Lua script: atomic, one round trip, awaited on the event loop
(`timepoint_billing.async_cache`), never a blocking call (issue 13 point 6). Without Redis the
in-process cache does the same in memory, with the lock's own counters. A request cancelled
while its script runs (the client left) gives the reservation back once the script answered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any

from django.conf import settings
from django.core.cache import cache

from timepoint_billing import async_cache
from timepoint_billing.errors import InsufficientCredits, ServiceUnavailable
from upstreams.flash_credit_lock import (
    GrantInFlight,
    counter_add,
    counter_sub,
    flash_user_busy_key,
    flash_user_granting_key,
    generation_busy_mark,
    generation_busy_unmark,
)

logger = logging.getLogger("timepoint.relay")

ADMITTED, OVER_BALANCE, GRANT_IN_FLIGHT = 0, 1, 2

# KEYS: reservation counter, busy counter, the grant worker's marker. ARGV: cost, balance, ttl ms.
# Returns {verdict, reserved total including this cost}. One script, so the order the lock needs
# between raising busy and looking for a grant (see `flash_user_granting_key`) cannot be broken.
RESERVE_LUA = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if total > tonumber(ARGV[2]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return {1, total}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return {2, total}
end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {0, total}
"""

# KEYS: reservation counter, busy counter. ARGV: cost, ttl ms. An expired counter has nothing
# left to give back; one that would go negative is set to 0.
RELEASE_LUA = """
local amounts = {tonumber(ARGV[1]), 1}
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('DECRBY', KEYS[i], amounts[i]) < 0 then
      redis.call('SET', KEYS[i], 0, 'PX', ARGV[2])
    end
  end
end
return 0
"""


def reservation_key(flash_user_id: str) -> str:
    return f"relay:reserved:{flash_user_id}"


# How long a generation waits for a grant to this user to finish before answering 503.
GRANT_WAIT_SECONDS = 3.0


def generation_hold_seconds() -> int:
    """TTL of reservations and busy markers: longer than any generation can run."""
    longest = max(settings.UPSTREAM_GENERATE_TIMEOUT, settings.SSE_MAX_DURATION_SECONDS)
    return int(longest) + 60


def patience() -> float:
    """How long a reservation may wait for Redis: as long as the limiter waits, for the same
    reason (on a saturated worker a late reply says more about the event loop than about Redis,
    and a script given up on may still have run). A Redis that is really down was caught by the
    limiter in front: credit-spending routes fail closed there."""
    return max(settings.LIMITER_WAIT_SECONDS, settings.REDIS_SOCKET_TIMEOUT)


def reservation_total(flash_user_id: str) -> int:
    """What generations in flight hold of this user's credits (sync: for sync callers)."""
    value = cache.get(reservation_key(flash_user_id))
    return int(value) if isinstance(value, int) else 0


def _over_balance(cost: int, balance: int, total: int) -> InsufficientCredits:
    available = max(0, balance - (total - cost))
    return InsufficientCredits(
        f"This generation costs {cost} credits; {available} are available.",
        extra={"balance": balance, "available": available, "cost": cost},
    )


# --- Without Redis: the in-process cache (a dict under a lock, no I/O, never awaited)


def _reserve_in_process(flash_user_id: str, cost: int, balance: int) -> None:
    ttl = generation_hold_seconds()
    total = counter_add(reservation_key(flash_user_id), cost, ttl)
    if total > balance:
        counter_sub(reservation_key(flash_user_id), cost, ttl)
        raise _over_balance(cost, balance, total)
    try:
        generation_busy_mark(flash_user_id, ttl=ttl)
    except BaseException:
        counter_sub(reservation_key(flash_user_id), cost, ttl)
        raise


def _release_in_process(flash_user_id: str, cost: int) -> None:
    ttl = generation_hold_seconds()
    counter_sub(reservation_key(flash_user_id), cost, ttl)
    generation_busy_unmark(flash_user_id, ttl=ttl)


# --- With Redis: one script each way


_background: set[asyncio.Task[Any]] = set()


def _spawn(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task that runs to its end whatever happens to the request that started it."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def _keys(flash_user_id: str) -> list[str]:
    return [
        reservation_key(flash_user_id),
        flash_user_busy_key(flash_user_id),
        flash_user_granting_key(flash_user_id),
    ]


async def _reserve_on_redis(flash_user_id: str, cost: int, balance: int) -> tuple[int, int]:
    try:
        verdict, total = await async_cache.script(
            RESERVE_LUA,
            keys=_keys(flash_user_id),
            args=[cost, balance, generation_hold_seconds() * 1000],
            patience=patience(),
        )
    except async_cache.CacheUnavailable:
        raise ServiceUnavailable(
            "Credit reservations are unavailable; nothing was charged.", code="reservation_failed"
        ) from None
    return int(verdict), int(total)


def _release_if_reserved(flash_user_id: str, cost: int, task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None or task.result()[0] != ADMITTED:
        return
    _spawn(_release_now(flash_user_id, cost))


async def _release_now(flash_user_id: str, cost: int) -> None:
    if async_cache.redis_location() is None:
        _release_in_process(flash_user_id, cost)
        return
    try:
        await async_cache.script(
            RELEASE_LUA,
            keys=_keys(flash_user_id)[:2],
            args=[cost, generation_hold_seconds() * 1000],
            patience=patience(),
        )
    except async_cache.CacheUnavailable as exc:
        # The counters' TTL gives the credits back in the end.
        logger.warning(
            {"event": "reservation_not_released", "user": flash_user_id, "error": str(exc)}
        )


# --- The relay's calls


async def reserve(*, flash_user_id: str, cost: int, balance: int) -> None:
    """Hold `cost` against `balance` and mark the user busy; 402 if the credits are already held
    by other generations, GrantInFlight (nothing held) while a grant changes the user's credits."""
    if async_cache.redis_location() is None:
        _reserve_in_process(flash_user_id, cost, balance)
        return
    step = _spawn(_reserve_on_redis(flash_user_id, cost, balance))
    try:
        # Shielded: a cancelled request must not cut the script off with its outcome unknown.
        verdict, total = await asyncio.shield(step)
    except asyncio.CancelledError:
        step.add_done_callback(functools.partial(_release_if_reserved, flash_user_id, cost))
        raise
    if verdict == OVER_BALANCE:
        raise _over_balance(cost, balance, total)
    if verdict == GRANT_IN_FLIGHT:
        raise GrantInFlight


async def release(*, flash_user_id: str, cost: int) -> None:
    """Give back a reservation and the busy mark (idempotence is the caller's: call once). Runs
    to its end even when the awaiting request is cancelled."""
    await asyncio.shield(_spawn(_release_now(flash_user_id, cost)))


def release_later(*, flash_user_id: str, cost: int, delay: float) -> None:
    """`release` after `delay` seconds on the running loop (the TTL covers a process exit)."""
    asyncio.get_running_loop().call_later(delay, lambda: _spawn(_release_now(flash_user_id, cost)))
