"""The rate limiter: per-minute and per-day windows plus a concurrency lease, checked atomically.

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

Backends: with REDIS_URL, one Lua script does check-and-take of all three limits in one round trip,
so every gateway process shares them. Every key it writes has a TTL: windows expire 5 s after their
window ends; the lease set expires with its newest lease, and each lease is a sorted-set member
scored by its own expiry, so a lease held by a killed worker stops counting after `lease_seconds`
(default 60 s; `renew()` extends it). Without REDIS_URL an in-process equivalent with the same
rules is used (one process only); its state lives as long as the default cache (`cache.clear()`
resets it).

Failure policy when Redis is unreachable or slower than REDIS_SOCKET_TIMEOUT (after BREAKER_FAILURES
such failures in a row Redis is skipped for BREAKER_SECONDS, so an outage costs a few timeouts per
process per second; a pool of REDIS_MAX_CONNECTIONS that stays full that long is load: this
request gets the policy, the breaker stays shut):

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
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis
from django.conf import settings
from django.core.cache import cache

from accounts.authentication import Caller
from apikeys.models import APIKey
from timepoint_billing.errors import RateLimited, ServiceUnavailable

logger = logging.getLogger("timepoint.limiter")

DEFAULT_LEASE_SECONDS = 60.0
WINDOW_GRACE_SECONDS = 5
BREAKER_SECONDS = 1.0
BREAKER_FAILURES = 3


@dataclass(frozen=True)
class Limits:
    per_minute: int
    per_day: int
    concurrency: int


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


# --- The atomic step, in Lua and in Python (same rules, same results)

# KEYS: minute window, day window, lease set.
# ARGV: now_ms, minute limit, day limit, concurrency limit, minute ttl s, day ttl s, lease id,
#       lease expiry ms.
# Returns {verdict, minute count, day count, in flight}; verdict 0 admitted, 1 minute, 2 day,
# 3 concurrency. Only an admitted request is counted.
ACQUIRE_LUA = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[3])
local minute = tonumber(redis.call('GET', KEYS[1]) or '0')
local day = tonumber(redis.call('GET', KEYS[2]) or '0')
if minute >= tonumber(ARGV[2]) then return {1, minute, day, inflight} end
if day >= tonumber(ARGV[3]) then return {2, minute, day, inflight} end
if inflight >= tonumber(ARGV[4]) then return {3, minute, day, inflight} end
minute = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
day = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[6])
local expiry = tonumber(ARGV[8])
redis.call('ZADD', KEYS[3], expiry, ARGV[7])
local ttl = expiry - now + 1000
if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
return {0, minute, day, inflight + 1}
"""

# KEYS: lease set. ARGV: now_ms, lease id, new expiry ms. Returns 1 if the lease was still held.
RENEW_LUA = """
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
local expiry = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[2])
local ttl = expiry - tonumber(ARGV[1]) + 1000
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""


@dataclass(frozen=True)
class _Step:
    subject: str
    limits: Limits
    now: float
    lease_id: str
    lease_seconds: float

    @property
    def minute_index(self) -> int:
        return int(self.now // 60)

    @property
    def day_index(self) -> int:
        return int(self.now // 86400)

    @property
    def minute_reset(self) -> int:
        return (self.minute_index + 1) * 60

    @property
    def day_reset(self) -> int:
        return (self.day_index + 1) * 86400

    def keys(self) -> list[str]:
        # The hash tag keeps one subject's keys in one slot should Redis ever be a cluster.
        base = f"rl:{{{self.subject}}}"
        return [f"{base}:m:{self.minute_index}", f"{base}:d:{self.day_index}", f"{base}:c"]

    def args(self) -> list[Any]:
        now_ms = int(self.now * 1000)
        return [
            now_ms,
            self.limits.per_minute,
            self.limits.per_day,
            self.limits.concurrency,
            self.minute_reset - int(self.now) + WINDOW_GRACE_SECONDS,
            self.day_reset - int(self.now) + WINDOW_GRACE_SECONDS,
            self.lease_id,
            now_ms + int(self.lease_seconds * 1000),
        ]


class _LocalLimiter:
    """The in-process limiter: the Lua script's rules over dicts, under one lock."""

    GENERATION_KEY = "limiter:local-generation"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.windows: dict[str, tuple[int, float]] = {}  # key -> (count, expires at)
        self.leases: dict[str, dict[str, float]] = {}  # lease-set key -> {lease id: expiry}
        self.generation: str | None = None

    def _follow_cache(self) -> None:
        # Tie the state's lifetime to the default cache, so `cache.clear()` (tests) resets it.
        marker = cache.get(self.GENERATION_KEY)
        if marker is None or marker != self.generation:
            self.windows.clear()
            self.leases.clear()
            self.generation = uuid.uuid4().hex
            cache.set(self.GENERATION_KEY, self.generation, None)

    def _count(self, key: str, now: float) -> int:
        count, expires = self.windows.get(key, (0, 0.0))
        return count if expires > now else 0

    def acquire(self, step: _Step) -> list[int]:
        minute_key, day_key, lease_key = step.keys()
        now = step.now
        with self.lock:
            self._follow_cache()
            if len(self.windows) > 50_000:
                self.windows = {k: v for k, v in self.windows.items() if v[1] > now}
            held = {i: e for i, e in self.leases.get(lease_key, {}).items() if e > now}
            self.leases[lease_key] = held
            minute, day = self._count(minute_key, now), self._count(day_key, now)
            if minute >= step.limits.per_minute:
                return [1, minute, day, len(held)]
            if day >= step.limits.per_day:
                return [2, minute, day, len(held)]
            if len(held) >= step.limits.concurrency:
                return [3, minute, day, len(held)]
            self.windows[minute_key] = (minute + 1, step.minute_reset + WINDOW_GRACE_SECONDS)
            self.windows[day_key] = (day + 1, step.day_reset + WINDOW_GRACE_SECONDS)
            held[step.lease_id] = now + step.lease_seconds
            return [0, minute + 1, day + 1, len(held)]

    def renew(self, lease_key: str, lease_id: str, expiry: float) -> bool:
        with self.lock:
            held = self.leases.get(lease_key, {})
            if held.get(lease_id, 0.0) <= time.time():
                return False
            held[lease_id] = expiry
            return True

    def release(self, lease_key: str, lease_id: str) -> None:
        with self.lock:
            self.leases.get(lease_key, {}).pop(lease_id, None)


_local = _LocalLimiter()


# --- Redis clients: one per process (the async one per event loop, as its connections are)


@dataclass(frozen=True)
class _SyncRedis:
    client: redis.Redis
    acquire: Any
    renew: Any


@dataclass(frozen=True)
class _AsyncRedis:
    client: aredis.Redis
    acquire: Any
    renew: Any


_sync_clients: dict[str, _SyncRedis] = {}
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _AsyncRedis]] = (
    weakref.WeakKeyDictionary()
)
_clients_lock = threading.Lock()
_breaker = {"open_until": 0.0, "failures": 0.0}
# RuntimeError: under uvloop (what uvicorn and gunicorn's UvicornWorker run), a write on a
# connection Redis reset raises "unable to perform operation on <TCPTransport closed=True>",
# which redis-py lets through; without it here a Redis restart answered 500 instead of the policy.
_REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError, RuntimeError)


def _client_options() -> dict[str, Any]:
    return {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT,
        "health_check_interval": 30,
    }


def sync_redis() -> _SyncRedis:
    """This process's Redis client for synchronous code (thread-safe connection pool)."""
    url = settings.REDIS_URL
    found = _sync_clients.get(url)
    if found is None:
        with _clients_lock:
            found = _sync_clients.get(url)
            if found is None:
                client = redis.Redis.from_url(url, **_client_options())
                found = _SyncRedis(
                    client, client.register_script(ACQUIRE_LUA), client.register_script(RENEW_LUA)
                )
                _sync_clients[url] = found
    return found


def async_redis() -> _AsyncRedis:
    """This event loop's asyncio Redis client (its connections belong to the loop)."""
    url = settings.REDIS_URL
    per_loop = _async_clients.setdefault(asyncio.get_running_loop(), {})
    found = per_loop.get(url)
    if found is None:
        # A pool that waits (bounded like a reply) for a free connection: redis-py's default
        # async pool raises as soon as its 100 connections are in use, which a burst of
        # concurrent requests on one loop turned into "Redis is down".
        pool = aredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=settings.REDIS_SOCKET_TIMEOUT,
            **_client_options(),
        )
        client = aredis.Redis(connection_pool=pool)
        found = per_loop[url] = _AsyncRedis(
            client, client.register_script(ACQUIRE_LUA), client.register_script(RENEW_LUA)
        )
    return found


def _redis_available() -> bool:
    return time.monotonic() >= _breaker["open_until"]


def _redis_answered() -> None:
    _breaker["failures"] = 0.0


def _redis_failed(exc: BaseException, step: _Step) -> None:
    """This request gets the failure policy. The breaker (Redis skipped for BREAKER_SECONDS)
    opens only after BREAKER_FAILURES failures in a row: one slow reply under a burst is not an
    outage, and a waiting pool that stayed full is load, never an outage."""
    exhausted = isinstance(exc, redis.ConnectionError) and "No connection available" in str(exc)
    if not exhausted:
        _breaker["failures"] += 1
        if _breaker["failures"] >= BREAKER_FAILURES:
            _breaker["open_until"] = time.monotonic() + BREAKER_SECONDS
            _breaker["failures"] = 0.0
    logger.warning(
        {
            "event": "limiter_redis_pool_full" if exhausted else "limiter_redis_unavailable",
            "subject": step.subject,
            "error": repr(exc),
        }
    )


# --- Leases and headers


def _headers(step: _Step, minute: int, day: int) -> dict[str, str]:
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
    backend: str = "local"  # "redis" | "local" | "none" (failed open: nothing to release)
    released: bool = False
    # The windows' counts after this request was counted (None when the limiter failed open).
    minute_used: int | None = None
    day_used: int | None = None

    @property
    def _lease_key(self) -> str:
        return f"rl:{{{self.subject}}}:c"

    async def release(self) -> None:
        """Free the slot. Idempotent; a Redis error is logged and the lease expires by TTL."""
        if self.released:
            return
        self.released = True
        if self.backend == "local":
            _local.release(self._lease_key, self.lease_id)
        elif self.backend == "redis":
            try:
                # Shielded: a request cancelled here (the client left) still frees its slot
                # instead of holding it until the lease's TTL.
                await asyncio.shield(async_redis().client.zrem(self._lease_key, self.lease_id))
            except _REDIS_ERRORS as exc:
                logger.warning({"event": "lease_release_failed", "error": repr(exc)})

    def release_sync(self) -> None:
        if self.released:
            return
        self.released = True
        if self.backend == "local":
            _local.release(self._lease_key, self.lease_id)
        elif self.backend == "redis":
            try:
                sync_redis().client.zrem(self._lease_key, self.lease_id)
            except _REDIS_ERRORS as exc:
                logger.warning({"event": "lease_release_failed", "error": repr(exc)})

    async def renew(self, seconds: float | None = None) -> bool:
        """Extend the lease to `seconds` (default: its lease_seconds) from now, for long streams.

        Returns False if the lease had already expired or was released (the caller may go on;
        the slot is simply no longer counted)."""
        if self.released or self.backend == "none":
            return not self.released
        now = time.time()
        expiry = now + (seconds or self.lease_seconds)
        if self.backend == "local":
            return _local.renew(self._lease_key, self.lease_id, expiry)
        try:
            held = await async_redis().renew(
                keys=[self._lease_key], args=[int(now * 1000), self.lease_id, int(expiry * 1000)]
            )
        except _REDIS_ERRORS as exc:
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


def _step(caller: Caller, lease_seconds: float | None) -> _Step:
    return _Step(
        subject=subject_for(caller),
        limits=limits_for(caller),
        now=time.time(),
        lease_id=uuid.uuid4().hex,
        lease_seconds=lease_seconds or DEFAULT_LEASE_SECONDS,
    )


def _decide(step: _Step, result: list[Any], route: str, backend: str) -> Lease:
    verdict, minute, day = int(result[0]), int(result[1]), int(result[2])
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
    )


def _fail(step: _Step, route: str, spends_credits: bool) -> Lease:
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
        return _decide(step, _local.acquire(step), route, "local")
    if not _redis_available():
        return _fail(step, route, spends_credits)
    try:
        result = await async_redis().acquire(keys=step.keys(), args=step.args())
    except _REDIS_ERRORS as exc:
        _redis_failed(exc, step)
        return _fail(step, route, spends_credits)
    _redis_answered()
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
    step = _Step(
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
    minute_key, day_key, _ = step.keys()
    used: list[int | None]
    if not settings.REDIS_URL:
        with _local.lock:
            _local._follow_cache()
            used = [_local._count(minute_key, step.now), _local._count(day_key, step.now)]
    elif not _redis_available():
        used = [None, None]
    else:
        try:
            raw = sync_redis().client.mget([minute_key, day_key])
        except _REDIS_ERRORS as exc:
            _redis_failed(exc, step)
            used = [None, None]
        else:
            _redis_answered()
            used = [int(value or 0) for value in raw]
    return WindowState(step.limits, used[0], used[1], step.minute_reset, step.day_reset)


def _acquire_step_sync(step: _Step, route: str, spends_credits: bool) -> Lease:
    if not settings.REDIS_URL:
        return _decide(step, _local.acquire(step), route, "local")
    if not _redis_available():
        return _fail(step, route, spends_credits)
    try:
        result = sync_redis().acquire(keys=step.keys(), args=step.args())
    except _REDIS_ERRORS as exc:
        _redis_failed(exc, step)
        return _fail(step, route, spends_credits)
    _redis_answered()
    return _decide(step, result, route, "redis")


def reset_breaker() -> None:
    """Forget a recent Redis failure (tests switch REDIS_URL between a dead and a live server)."""
    _breaker["open_until"] = 0.0
    _breaker["failures"] = 0.0
