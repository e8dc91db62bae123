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

Revocation: a revoked key, a rolled key whose grace ended or an expired key stops on every process
within a second, although each process trusts its key lookups for a few seconds
(`apikeys.services`): `key_stops_at` writes the moment into Redis, and the same script that counts
the request refuses a key past that moment (verdict 4 → 401 `invalid_api_key`). No extra round
trip, no database query per request.

Failure policy. Whether Redis is *down* is decided by evidence about Redis, never by the gateway's
own clock on a busy event loop (issue 13: under a burst on 2 cores every reply looked late, the
breaker opened and 198 of 200 reads were admitted unmetered):
- a refused or reset connection is evidence; BREAKER_FAILURES of them in a row open the breaker;
- a reply later than REDIS_SOCKET_TIMEOUT is *not*: a thread (whose socket timeouts the event
  loop cannot delay) then PINGs Redis with REDIS_HEALTH_TIMEOUT. No answer → Redis is hanging:
  the breaker opens and this request gets the policy. An answer → the gateway is merely busy: the
  request keeps waiting for its own reply, up to LIMITER_WAIT_SECONDS, and is then shed with 503
  `limiter_busy` + Retry-After (never admitted unmetered); so is a request that waited that long
  for a pooled connection (REDIS_MAX_CONNECTIONS per event loop).
While the breaker is open (BREAKER_SECONDS) Redis is skipped:

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
import functools
import logging
import threading
import time
import uuid
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis
from django.conf import settings
from django.core.cache import cache
from redis.backoff import NoBackoff
from redis.retry import Retry

from apikeys.models import APIKey
from timepoint_billing.callers import Caller
from timepoint_billing.errors import RateLimited, ServiceUnavailable, Unauthenticated
from timepoint_billing.metrics import LIMITER_DECISIONS

logger = logging.getLogger("timepoint.limiter")

DEFAULT_LEASE_SECONDS = 60.0
WINDOW_GRACE_SECONDS = 5
BREAKER_SECONDS = 1.0
BREAKER_FAILURES = 3
# How long a stop marker outlives its moment: far longer than any process caches a key lookup.
STOP_MARKER_MARGIN_SECONDS = 120.0


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


def stop_marker(subject: str) -> str:
    """The Redis key holding the moment (Unix ms) a key stops working; never set for users."""
    return f"rl:{{{subject}}}:stops"


# --- The atomic step, in Lua and in Python (same rules, same results)

# KEYS: minute window, day window, lease set, the key's stop marker (`key_stops_at`).
# ARGV: now_ms, minute limit, day limit, concurrency limit, minute ttl s, day ttl s, lease id,
#       lease expiry ms.
# Returns {verdict, minute count, day count, in flight}; verdict 0 admitted, 1 minute, 2 day,
# 3 concurrency, 4 the key has stopped working. Only an admitted request is counted.
ACQUIRE_LUA = """
local now = tonumber(ARGV[1])
local stops = redis.call('GET', KEYS[4])
if stops and tonumber(stops) <= now then return {4, 0, 0, 0} end
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
        return [
            f"{base}:m:{self.minute_index}",
            f"{base}:d:{self.day_index}",
            f"{base}:c",
            stop_marker(self.subject),
        ]

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
        self.stops: dict[str, float] = {}  # stop marker -> moment the key stops (Unix s)
        self.generation: str | None = None

    def _follow_cache(self) -> None:
        # Tie the state's lifetime to the default cache, so `cache.clear()` (tests) resets it.
        marker = cache.get(self.GENERATION_KEY)
        if marker is None or marker != self.generation:
            self.windows.clear()
            self.leases.clear()
            self.stops.clear()
            self.generation = uuid.uuid4().hex
            cache.set(self.GENERATION_KEY, self.generation, None)

    def _count(self, key: str, now: float) -> int:
        count, expires = self.windows.get(key, (0, 0.0))
        return count if expires > now else 0

    def acquire(self, step: _Step) -> list[int]:
        minute_key, day_key, lease_key, stop_key = step.keys()
        now = step.now
        with self.lock:
            self._follow_cache()
            if self.stops.get(stop_key, now + 1) <= now:
                return [4, 0, 0, 0]
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

    def stop_at(self, stop_key: str, moment: float | None) -> None:
        with self.lock:
            self._follow_cache()
            if moment is None:
                self.stops.pop(stop_key, None)
            else:
                self.stops[stop_key] = moment

    def stopped(self, stop_key: str, now: float) -> bool:
        with self.lock:
            self._follow_cache()
            return self.stops.get(stop_key, now + 1) <= now


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
    """This event loop's asyncio Redis client (its connections belong to the loop).

    Its own timeouts are LIMITER_WAIT_SECONDS, not REDIS_SOCKET_TIMEOUT: measured on a busy event
    loop they say more about the gateway than about Redis. A slow reply is judged by `_Watch`."""
    url = settings.REDIS_URL
    per_loop = _async_clients.setdefault(asyncio.get_running_loop(), {})
    found = per_loop.get(url)
    if found is None:
        patience = max(settings.LIMITER_WAIT_SECONDS, settings.REDIS_SOCKET_TIMEOUT)
        # A pool that waits for a free connection: redis-py's default async pool raises as soon
        # as its connections are in use, which a burst on one loop turned into "Redis is down".
        pool = aredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=patience,
            socket_timeout=patience,
            socket_connect_timeout=patience,
            health_check_interval=30,
        )
        client = aredis.Redis(connection_pool=pool)
        found = per_loop[url] = _AsyncRedis(
            client, client.register_script(ACQUIRE_LUA), client.register_script(RENEW_LUA)
        )
    return found


class _HealthProbe:
    """Whether Redis answers a PING, asked from a thread of its own.

    A thread's socket timeout is kept by the kernel: a reply that arrives in time is seen in time
    however busy the event loop is (the thread only waits for the GIL, which the loop yields every
    few milliseconds). One probe at a time per process; a verdict is reused for PROBE_REUSE_SECONDS,
    so a burst of slow replies costs one PING, not one per request."""

    PROBE_REUSE_SECONDS = 0.25

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-probe")
        self.current: Future[bool] | None = None
        self.finished = 0.0
        self.clients: dict[str, redis.Redis] = {}

    def ask(self) -> Future[bool]:
        with self.lock:
            current = self.current
            stale = time.monotonic() - self.finished > self.PROBE_REUSE_SECONDS
            if current is None or (current.done() and stale):
                current = self.current = self.executor.submit(self._ping, settings.REDIS_URL)
            return current

    def _ping(self, url: str) -> bool:
        try:
            client = self.clients.get(url)
            if client is None:
                timeout = settings.REDIS_HEALTH_TIMEOUT
                client = self.clients[url] = redis.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0),  # one PING, one verdict
                )
            return bool(client.ping())
        except _REDIS_ERRORS as exc:
            logger.warning({"event": "limiter_redis_probe_failed", "error": repr(exc)})
            return False
        finally:
            self.finished = time.monotonic()


_probe = _HealthProbe()


class _Watch:
    """Watches one limiter call on the event loop without a task or a timeout of its own: after
    REDIS_SOCKET_TIMEOUT it asks `_probe`; a failed PING cancels the call ("down"), otherwise the
    call may run until LIMITER_WAIT_SECONDS ("busy")."""

    def __init__(self, loop: asyncio.AbstractEventLoop, call: asyncio.Task[Any]) -> None:
        self.loop = loop
        self.call = call
        self.reason: str | None = None
        self.stopped = False
        self.timers = [loop.call_later(settings.REDIS_SOCKET_TIMEOUT, self._slow)]

    def _slow(self) -> None:
        if self.stopped:
            return
        asyncio.wrap_future(_probe.ask(), loop=self.loop).add_done_callback(self._probed)
        rest = max(0.0, settings.LIMITER_WAIT_SECONDS - settings.REDIS_SOCKET_TIMEOUT)
        self.timers.append(self.loop.call_later(rest, self._give_up, "busy"))

    def _probed(self, probe: asyncio.Future[bool]) -> None:
        if not probe.cancelled() and probe.exception() is None and probe.result() is False:
            self._give_up("down")

    def _give_up(self, reason: str) -> None:
        if not self.stopped and self.reason is None and not self.call.done():
            self.reason = reason
            self.call.cancel()

    def stop(self) -> None:
        self.stopped = True
        for timer in self.timers:
            timer.cancel()


class _Shed(Exception):
    """The limiter could not answer this request: `reason` "down" (Redis) or "busy" (us)."""

    def __init__(self, reason: str, error: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


_background: set[asyncio.Future[Any]] = set()


def _release_if_admitted(step: _Step, call: asyncio.Task[Any]) -> None:
    """The request was cancelled (the client left) while its script ran: if the script admitted
    it, free the slot now rather than after the lease's TTL."""
    if call.cancelled() or call.exception() is not None or int(call.result()[0]) != 0:
        return
    lease_key = step.keys()[2]
    release: asyncio.Future[Any] = asyncio.ensure_future(
        async_redis().client.zrem(lease_key, step.lease_id)
    )
    _background.add(release)
    release.add_done_callback(_background.discard)


async def _acquire_on_redis(step: _Step) -> list[Any]:
    """Run the script; raise `_Shed` when the limiter cannot give this request an answer."""
    loop = asyncio.get_running_loop()
    call = loop.create_task(async_redis().acquire(keys=step.keys(), args=step.args()))
    watch = _Watch(loop, call)
    try:
        # Shielded: a request cancelled here must not cut the script off mid-reply.
        return list(await asyncio.shield(call))
    except asyncio.CancelledError:
        if watch.reason is None:
            call.add_done_callback(functools.partial(_release_if_admitted, step))
            raise
        raise _Shed(watch.reason) from None
    except (TimeoutError, redis.TimeoutError) as exc:
        raise _Shed("busy", exc) from exc  # LIMITER_WAIT_SECONDS passed: no verdict on Redis
    except redis.ConnectionError as exc:
        if "No connection available" in str(exc):
            raise _Shed("busy", exc) from exc  # waited that long for a pooled connection
        raise
    finally:
        watch.stop()


def _redis_available() -> bool:
    return time.monotonic() >= _breaker["open_until"]


def _redis_answered() -> None:
    _breaker["failures"] = 0.0


def _open_breaker() -> None:
    _breaker["open_until"] = time.monotonic() + BREAKER_SECONDS
    _breaker["failures"] = 0.0


def _redis_failed(exc: BaseException, step: _Step) -> None:
    """This request gets the failure policy. The breaker (Redis skipped for BREAKER_SECONDS)
    opens only after BREAKER_FAILURES failures in a row: one reset connection is not an outage."""
    _breaker["failures"] += 1
    if _breaker["failures"] >= BREAKER_FAILURES:
        _open_breaker()
    logger.warning(
        {"event": "limiter_redis_unavailable", "subject": step.subject, "error": repr(exc)}
    )


def _shed(shed: _Shed, step: _Step, route: str, spends_credits: bool) -> Lease:
    if shed.reason == "down":
        _open_breaker()  # the probe's failed PING is the evidence
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
            zrem = asyncio.ensure_future(async_redis().client.zrem(self._lease_key, self.lease_id))
            try:
                # Shielded: a request cancelled here (the client left) still frees its slot
                # instead of holding it until the lease's TTL. Bounded: past REDIS_SOCKET_TIMEOUT
                # the response goes and the release finishes in the background.
                await asyncio.wait_for(asyncio.shield(zrem), settings.REDIS_SOCKET_TIMEOUT)
            except TimeoutError:
                _background.add(zrem)
                zrem.add_done_callback(_background.discard)
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
            held = await asyncio.wait_for(
                async_redis().renew(
                    keys=[self._lease_key],
                    args=[int(now * 1000), self.lease_id, int(expiry * 1000)],
                ),
                settings.LIMITER_WAIT_SECONDS,
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


def _decide(step: _Step, result: list[Any], route: str, backend: str) -> Lease:
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
    )


def _fail(step: _Step, route: str, spends_credits: bool) -> Lease:
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
        return _decide(step, _local.acquire(step), route, "local")
    if not _redis_available():
        return _fail(step, route, spends_credits)
    try:
        result = await _acquire_on_redis(step)
    except _Shed as shed:
        return _shed(shed, step, route, spends_credits)
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
    minute_key, day_key = step.keys()[:2]
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


# --- Keys that stop working: seen by every process within a request


def key_stops_at(*, key_id: int, moment: float | None) -> None:
    """Every gateway process refuses key `key_id` from `moment` (Unix seconds) on, although it may
    hold the key in its lookup cache: the limiter script checks this marker on every request.
    `moment=None` removes the marker (a key made to work again, without an end).

    Kept past the moment for as long as any process may still trust a cached lookup of the key
    (`apikeys.services.KEY_CACHE_SECONDS`, with a wide margin). If Redis is unreachable the
    marker is lost and other processes notice within their cache's lifetime (logged)."""
    marker = stop_marker(f"k{key_id}")
    if not settings.REDIS_URL:
        _local.stop_at(marker, moment)
        return
    try:
        if moment is None:
            sync_redis().client.delete(marker)
            return
        keep_ms = int((max(0.0, moment - time.time()) + STOP_MARKER_MARGIN_SECONDS) * 1000)
        sync_redis().client.set(marker, int(moment * 1000), px=keep_ms)
    except _REDIS_ERRORS as exc:
        logger.warning({"event": "key_stop_marker_failed", "key_id": key_id, "error": repr(exc)})


def key_has_stopped(*, key_id: int) -> bool:
    """Whether `key_stops_at` said key `key_id` no longer works (one Redis read; False when Redis
    cannot be asked, the database then being the authority)."""
    marker = stop_marker(f"k{key_id}")
    now = time.time()
    if not settings.REDIS_URL:
        return _local.stopped(marker, now)
    try:
        moment = sync_redis().client.get(marker)
    except _REDIS_ERRORS as exc:
        logger.warning({"event": "key_stop_marker_unreadable", "error": repr(exc)})
        return False
    return moment is not None and int(moment) <= int(now * 1000)
