"""The rate limiter: per-minute and per-day windows plus a concurrency lease, checked atomically.
(Past 400 lines because its rules, headers and failure policy are documented here, in one place.)

Usage (async relay)::

    lease = await limits.acquire(caller, route="/api/v1/generate/stream", spends_credits=True)
    try:
        ...                         # long streams: await lease.renew() every < lease_seconds
        response.headers.update(lease.headers)
    finally:
        await lease.release()       # idempotent; also `async with lease:`

DRF views use `apikeys.drf.LimitedMeteredApiView` (sync: `acquire_sync` / `Lease.release_sync`).

Who is counted: an API-key caller by its key (each key has its own windows, its tier's limits or
staff-set overrides); a session/JWT caller by user, with USER_RATE_LIMIT_* settings.

Backends: with REDIS_URL, one Lua script does check-and-take of all three limits and the key's
revocation check in one round trip, so every gateway process shares them; the release of a
finished request's lease rides along with a later call (`apikeys.lease_releases`), so an async
request costs Redis one round trip. Every key it writes has a TTL: windows expire 5 s after their
window ends; the lease set expires with its newest lease, and each lease is a sorted-set member
scored by its own expiry, so a lease held by a killed worker stops counting after `lease_seconds`
(default 60 s; `renew()` extends it). Without REDIS_URL the same script runs on an in-process
Redis (fakeredis with Lua, one process only), so every test runs the script production runs; its
state lives as long as the default cache (`cache.clear()` resets it) and it cannot fail, so the
failure policy below is a real Redis's.

Revocation: a key that stopped working (revoked, rolled past its grace, expired) is refused by
the same script that counts the request (verdict 4 → 401 `invalid_api_key`), on every process
within a second: `apikeys.key_stops`.

Failure policy. Whether Redis is *down* (the breaker is open) or the gateway merely busy is
judged from evidence about Redis (`apikeys.limiter_redis`). A request the limiter could not
answer in LIMITER_WAIT_SECONDS because the gateway is busy is shed with 503 `limiter_busy` +
Retry-After (never admitted unmetered). When Redis is down:

| request                      | policy      | answer                                             |
|------------------------------|-------------|----------------------------------------------------|
| spends_credits=False (reads) | fail open   | served without limit headers, a warning is logged  |
| spends_credits=True          | fail closed | 503 `limiter_unavailable` with Retry-After         |

Headers: `X-RateLimit-Limit/Remaining/Reset` describe the binding window (the minute window unless
fewer requests remain today than this minute); Reset is a Unix timestamp (seconds). The IETF fields
(draft-ietf-httpapi-ratelimit-headers-10) carry both windows:
`RateLimit-Policy: "minute";q=60;w=60, "day";q=1000;w=86400` and
`RateLimit: "minute";r=59;t=12, "day";r=990;t=3600`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from apikeys import lease_releases
from apikeys.limiter_redis import (
    REDIS_ERRORS,
    Limits,
    Shed,
    Step,
    acquire_on_redis,
    async_redis,
    background,
    in_process,
    lease_set_key,
    open_breaker,
    redis_answered,
    redis_available,
    redis_failed,
    sync_redis,
)
from apikeys.models import APIKey
from timepoint_billing.callers import Caller
from timepoint_billing.errors import RateLimited, ServiceUnavailable, Unauthenticated
from timepoint_billing.metrics import LIMITER_DECISIONS

logger = logging.getLogger("timepoint.limiter")

DEFAULT_LEASE_SECONDS = 60.0


# Seed §6 and the public docs.
TIER_LIMITS: dict[str, Limits] = {
    "free": Limits(per_minute=10, per_day=100, concurrency=1),
    "pro": Limits(per_minute=60, per_day=1_000, concurrency=5),
    "enterprise": Limits(per_minute=300, per_day=10_000, concurrency=20),
}


def limits_for(caller: Caller) -> Limits:
    """A key's tier limits (with any staff-set overrides); the settings' limits for users."""
    if caller.api_key is None:
        return Limits(
            per_minute=settings.USER_RATE_LIMIT_PER_MINUTE,
            per_day=settings.USER_RATE_LIMIT_PER_DAY,
            concurrency=settings.USER_CONCURRENCY_LIMIT,
        )
    return key_limits(caller.api_key)


def key_limits(key: APIKey) -> Limits:
    """The tier's limits, with any staff-set override per field."""
    base = TIER_LIMITS.get(key.tier, TIER_LIMITS["free"])
    return Limits(
        per_minute=key.rate_limit_per_minute or base.per_minute,
        per_day=key.rate_limit_per_day or base.per_day,
        concurrency=key.concurrency_limit or base.concurrency,
    )


def subject_for(caller: Caller) -> str:
    return f"k{caller.api_key.pk}" if caller.api_key is not None else f"u{caller.user.pk}"


def _shed(shed: Shed, step: Step, route: str, spends_credits: bool) -> Lease:
    if shed.reason == "down":
        open_breaker()  # the probe's failed PING is the evidence
        logger.warning(
            {"event": "limiter_redis_unavailable", "subject": step.subject, "error": "no PING"}
        )
        return _fail(step, route, spends_credits)
    _BUSY.inc()
    logger.warning(
        {
            "event": "limiter_busy",
            "subject": step.subject,
            "route": route,
            "error": repr(shed.error),
        }
    )
    raise ServiceUnavailable(
        "The gateway is too busy to check this request's rate limit; nothing was charged. "
        "Retry shortly.",
        code="limiter_busy",
        retry_after=1,
    )


# --- Leases and headers


def _headers(step: Step, minute: int, day: int) -> dict[str, str]:
    limits = step.limits
    minute_left = max(0, limits.per_minute - minute)
    day_left = max(0, limits.per_day - day)
    now = int(step.now)
    if day_left < minute_left:
        binding = (limits.per_day, day_left, step.day_reset)
    else:
        binding = (limits.per_minute, minute_left, step.minute_reset)
    return {
        "X-RateLimit-Limit": str(binding[0]),
        "X-RateLimit-Remaining": str(binding[1]),
        "X-RateLimit-Reset": str(binding[2]),
        "RateLimit-Policy": (
            f'"minute";q={limits.per_minute};w=60, "day";q={limits.per_day};w=86400'
        ),
        "RateLimit": (
            f'"minute";r={minute_left};t={step.minute_reset - now}, '
            f'"day";r={day_left};t={step.day_reset - now}'
        ),
    }


@dataclass
class Lease:
    """An admitted request's concurrency slot. Release it when the response is done."""

    subject: str
    lease_id: str
    route: str
    lease_seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    backend: str = "local"  # "redis" | "local" (in-process) | "none" (failed open: no slot held)
    released: bool = False
    # The windows' counts after this request was counted (None when the limiter failed open).
    minute_used: int | None = None
    day_used: int | None = None
    # This request took its subject's last concurrency slot: until Redis frees it, the subject's
    # next request is refused, so its release is sent before the answer leaves (see `release`).
    took_last_slot: bool = False

    @property
    def _lease_key(self) -> str:
        return lease_set_key(self.subject)

    async def release(self) -> None:
        """Free the slot (on Redis: within milliseconds, see `apikeys.lease_releases`).
        Idempotent; a Redis error is logged and the lease expires by TTL."""
        if self.released:
            return
        self.released = True
        if self.backend == "local":
            sync_redis().client.zrem(self._lease_key, self.lease_id)
        elif self.backend == "redis" and not self.took_last_slot:
            # No round trip of its own: carried by this subject's next acquire on this loop or
            # flushed within milliseconds (`apikeys.lease_releases`). Nothing awaited, so a
            # request cancelled here (the client left) cannot lose its release.
            lease_releases.later(self._lease_key, self.lease_id)
        elif self.backend == "redis":
            # The subject's last slot (a free key's only one): freed before the answer leaves,
            # so a client that waits for each answer is never refused for a slot still queued
            # on this worker while its next request reaches another.
            zrem = asyncio.ensure_future(async_redis().client.zrem(self._lease_key, self.lease_id))
            try:
                # Shielded: a request cancelled here (the client left) still frees its slot
                # instead of holding it until the lease's TTL. Bounded: past REDIS_SOCKET_TIMEOUT
                # the response goes and the release finishes in the background.
                await asyncio.wait_for(asyncio.shield(zrem), settings.REDIS_SOCKET_TIMEOUT)
            except TimeoutError:
                background.add(zrem)
                zrem.add_done_callback(background.discard)
            except REDIS_ERRORS as exc:
                logger.warning({"event": "lease_release_failed", "error": repr(exc)})

    def release_sync(self) -> None:
        if self.released:
            return
        self.released = True
        if self.backend != "none":
            try:
                sync_redis().client.zrem(self._lease_key, self.lease_id)
            except REDIS_ERRORS as exc:
                logger.warning({"event": "lease_release_failed", "error": repr(exc)})

    async def renew(self, seconds: float | None = None) -> bool:
        """Extend the lease to `seconds` (default: its lease_seconds) from now, for long streams.

        Returns False if the lease had already expired or was released (the caller may go on;
        the slot is simply no longer counted)."""
        if self.released or self.backend == "none":
            return not self.released
        now = time.time()
        expiry = now + (seconds or self.lease_seconds)
        args = [int(now * 1000), self.lease_id, int(expiry * 1000)]
        if self.backend == "local":
            return bool(sync_redis().renew(keys=[self._lease_key], args=args))
        try:
            held = await asyncio.wait_for(
                async_redis().renew(keys=[self._lease_key], args=args),
                settings.LIMITER_WAIT_SECONDS,
            )
        except REDIS_ERRORS as exc:
            logger.warning({"event": "lease_renew_failed", "error": repr(exc)})
            return True
        return bool(held)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release_sync()


_VERDICTS = {1: "minute", 2: "day", 3: "concurrency"}


def _step(caller: Caller, lease_seconds: float | None) -> Step:
    return Step(
        subject=subject_for(caller),
        limits=limits_for(caller),
        now=time.time(),
        lease_id=uuid.uuid4().hex,
        lease_seconds=lease_seconds or DEFAULT_LEASE_SECONDS,
    )


# Decision counters (timepoint_billing/metrics.py), bound once: the hot path only increments.
_DECISION = {
    0: LIMITER_DECISIONS.labels("admitted"),
    1: LIMITER_DECISIONS.labels("refused"),
    2: LIMITER_DECISIONS.labels("refused"),
    3: LIMITER_DECISIONS.labels("refused"),
    4: LIMITER_DECISIONS.labels("invalid_key"),
}
_FAILED_OPEN = LIMITER_DECISIONS.labels("failed_open")
_FAILED_CLOSED = LIMITER_DECISIONS.labels("failed_closed")
_BUSY = LIMITER_DECISIONS.labels("busy")


def _decide(step: Step, result: list[Any], route: str, backend: str) -> Lease:
    verdict, minute, day = int(result[0]), int(result[1]), int(result[2])
    _DECISION[min(verdict, 4)].inc()
    if verdict == 4:
        raise Unauthenticated("The API key is invalid, expired or revoked.", code="invalid_api_key")
    headers = _headers(step, minute, day)
    if verdict:
        which = _VERDICTS[verdict]
        now = int(step.now)
        retry_after = {"minute": step.minute_reset - now, "day": step.day_reset - now}.get(which, 1)
        if which != "concurrency":
            # The binding window of a 429 is the one that was hit.
            limit, reset = (
                (step.limits.per_minute, step.minute_reset)
                if which == "minute"
                else (step.limits.per_day, step.day_reset)
            )
            headers.update(
                {
                    "X-RateLimit-Limit": str(limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                }
            )
        raise RateLimited(
            f"Rate limit exceeded ({which}).",
            code="rate_limited",
            retry_after=max(1, retry_after),
            headers=headers,
            extra={"limit": which},
        )
    return Lease(
        subject=step.subject,
        lease_id=step.lease_id,
        route=route,
        lease_seconds=step.lease_seconds,
        headers=headers,
        backend=backend,
        minute_used=minute,
        day_used=day,
        took_last_slot=int(result[3]) >= step.limits.concurrency,
    )


def _fail(step: Step, route: str, spends_credits: bool) -> Lease:
    (_FAILED_CLOSED if spends_credits else _FAILED_OPEN).inc()
    if spends_credits:
        raise ServiceUnavailable(
            "Rate limiting is temporarily unavailable; nothing was charged. Retry shortly.",
            code="limiter_unavailable",
            retry_after=1,
        )
    logger.warning({"event": "limiter_fail_open", "subject": step.subject, "route": route})
    return Lease(
        subject=step.subject,
        lease_id=step.lease_id,
        route=route,
        lease_seconds=step.lease_seconds,
        backend="none",
    )


async def acquire(
    caller: Caller, *, route: str, spends_credits: bool, lease_seconds: float | None = None
) -> Lease:
    """Check the minute and day windows and take a concurrency lease, atomically.

    Over a limit → RateLimited (429, `extra={"limit": "minute"|"day"|"concurrency"}`, Retry-After
    and the limit headers). Redis unavailable → see the module's failure policy."""
    step = _step(caller, lease_seconds)
    if not settings.REDIS_URL:
        return _acquire_in_process(step, route)
    if not redis_available():
        return _fail(step, route, spends_credits)
    lease_key = lease_set_key(step.subject)
    releasing = lease_releases.take(lease_key)
    try:
        result = await acquire_on_redis(step, releasing)
    except BaseException as exc:
        # The script may not have run: the releases it carried go out with the next flush.
        lease_releases.put_back(lease_key, releasing)
        if isinstance(exc, Shed):
            return _shed(exc, step, route, spends_credits)
        if isinstance(exc, REDIS_ERRORS):
            redis_failed(exc, step)
            return _fail(step, route, spends_credits)
        raise
    redis_answered()
    return _decide(step, result, route, "redis")


def acquire_sync(
    caller: Caller, *, route: str, spends_credits: bool, lease_seconds: float | None = None
) -> Lease:
    """`acquire` for synchronous code (DRF views); same rules, same Redis keys."""
    return _acquire_step_sync(_step(caller, lease_seconds), route, spends_credits)


def acquire_subject_sync(
    *, subject: str, limits: Limits, route: str, spends_credits: bool = False
) -> Lease:
    """`acquire_sync` for a subject that is not a user or a key (an internal service, issue 20):
    the same windows and lease rules under the caller's own subject and limits."""
    step = Step(
        subject=subject,
        limits=limits,
        now=time.time(),
        lease_id=uuid.uuid4().hex,
        lease_seconds=DEFAULT_LEASE_SECONDS,
    )
    return _acquire_step_sync(step, route, spends_credits)


@dataclass(frozen=True)
class WindowState:
    """What a subject has used of its windows, without taking anything (None: Redis down)."""

    limits: Limits
    minute_used: int | None
    day_used: int | None
    minute_reset: int
    day_reset: int


def peek_sync(caller: Caller) -> WindowState:
    """The caller's minute and day counts as the limiter sees them, counting nothing."""
    step = _step(caller, None)
    minute_key, day_key = step.keys()[:2]
    used: list[int | None]
    if not settings.REDIS_URL:
        in_process.follow_cache()
    if settings.REDIS_URL and not redis_available():
        used = [None, None]
    else:
        try:
            raw = sync_redis().client.mget([minute_key, day_key])
        except REDIS_ERRORS as exc:
            redis_failed(exc, step)
            used = [None, None]
        else:
            redis_answered()
            used = [int(value or 0) for value in raw]
    return WindowState(step.limits, used[0], used[1], step.minute_reset, step.day_reset)


def _acquire_in_process(step: Step, route: str) -> Lease:
    """Without REDIS_URL: the script on the in-process Redis (no I/O, so also on the event loop)."""
    in_process.follow_cache()
    result = sync_redis().acquire(keys=step.keys(), args=step.args())
    return _decide(step, list(result), route, "local")


def _acquire_step_sync(step: Step, route: str, spends_credits: bool) -> Lease:
    if not settings.REDIS_URL:
        return _acquire_in_process(step, route)
    if not redis_available():
        return _fail(step, route, spends_credits)
    try:
        result = sync_redis().acquire(keys=step.keys(), args=step.args())
    except REDIS_ERRORS as exc:
        redis_failed(exc, step)
        return _fail(step, route, spends_credits)
    redis_answered()
    return _decide(step, result, route, "redis")
