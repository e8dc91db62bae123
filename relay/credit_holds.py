"""Credit holds: before a generation reaches Flash its cost is *reserved* against the balance in
the shared cache (one counter per Flash user, incremented atomically: `cache.incr` is atomic on
LocMem and Redis) so N parallel requests with credits for one admit exactly one, across processes;
and the user is marked busy in `upstreams.flash_credit_lock` (the lock grants take too), so the
grant worker waits until Flash has written the generation's charge back (pitfall 11), and, the
other way round, a generation waits (bounded, then 503 `credits_busy`) while a grant holds the
user's credits. Both keys carry a TTL longer than the generation timeout, so a killed worker
cannot leak them."""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings
from django.core.cache import cache

from timepoint_billing.errors import (
    InsufficientCredits,
)
from upstreams.flash_credit_lock import (
    counter_add,
    counter_sub,
    generation_busy_mark,
    generation_busy_unmark,
)

logger = logging.getLogger("timepoint.relay")


def generation_hold_seconds() -> int:
    """TTL of reservations and busy markers: longer than any generation can run."""
    longest = max(settings.UPSTREAM_GENERATE_TIMEOUT, settings.SSE_MAX_DURATION_SECONDS)
    return int(longest) + 60


# --- Reservations and the busy marker


def reservation_key(flash_user_id: str) -> str:
    return f"relay:reserved:{flash_user_id}"


# How long a generation waits for a grant to this user to finish before answering 503.
GRANT_WAIT_SECONDS = 3.0


def reservation_total(flash_user_id: str) -> int:
    value = cache.get(reservation_key(flash_user_id))
    return int(value) if isinstance(value, int) else 0


def reserve(*, flash_user_id: str, cost: int, balance: int) -> None:
    """Hold `cost` against `balance` and mark the user busy; 402 if the credits are already held
    by other generations, GrantInFlight (nothing held) while a grant changes the user's credits."""
    ttl = generation_hold_seconds()
    total = counter_add(reservation_key(flash_user_id), cost, ttl)
    if total > balance:
        counter_sub(reservation_key(flash_user_id), cost, ttl)
        available = max(0, balance - (total - cost))
        raise InsufficientCredits(
            f"This generation costs {cost} credits; {available} are available.",
            extra={"balance": balance, "available": available, "cost": cost},
        )
    try:
        generation_busy_mark(flash_user_id, ttl=ttl)
    except BaseException:
        counter_sub(reservation_key(flash_user_id), cost, ttl)
        raise


def release(*, flash_user_id: str, cost: int) -> None:
    """Give back a reservation and the busy mark (idempotence is the caller's: call once)."""
    ttl = generation_hold_seconds()
    counter_sub(reservation_key(flash_user_id), cost, ttl)
    generation_busy_unmark(flash_user_id, ttl=ttl)


def release_later(*, flash_user_id: str, cost: int, delay: float) -> None:
    """`release` after `delay` seconds on the running loop (the TTL covers a process exit)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        release(flash_user_id=flash_user_id, cost=cost)
        return
    loop.call_later(delay, lambda: release(flash_user_id=flash_user_id, cost=cost))
