"""The limiter's store and how its failures are judged: the Lua scripts that check and count
atomically, the Redis clients that run them (REDIS_URL), the in-process Redis that runs the same
scripts without it (fakeredis with Lua), and the evidence that Redis is down rather than the
gateway busy (`apikeys.limits` says what each request then gets). (Just past 400 lines: the
scripts and the failure evidence about the store that runs them belong together.)

Whether Redis is *down* is decided by evidence about Redis, never by the gateway's own clock on a
busy event loop (issue 13: under a burst on 2 cores every reply looked late, the breaker opened and
198 of 200 reads were admitted unmetered):
- a refused or reset connection is evidence; BREAKER_FAILURES of them in a row open the breaker;
- a reply later than REDIS_SOCKET_TIMEOUT is *not*: a thread (whose socket timeouts the event
  loop cannot delay) then PINGs Redis with REDIS_HEALTH_TIMEOUT. No answer → Redis is hanging:
  the breaker opens and this request gets the policy. An answer → the gateway is merely busy: the
  request keeps waiting for its own reply, up to LIMITER_WAIT_SECONDS, and is then shed
  (`Shed("busy")`); so is a request that waited that long for a pooled connection
  (REDIS_MAX_CONNECTIONS per event loop).
While the breaker is open (BREAKER_SECONDS) Redis is skipped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis
from django.conf import settings
from django.core.cache import cache
from redis.backoff import NoBackoff
from redis.retry import Retry

from timepoint_billing import async_cache, redis_batches

logger = logging.getLogger("timepoint.limiter")

WINDOW_GRACE_SECONDS = 5
BREAKER_SECONDS = 1.0
BREAKER_FAILURES = 3


@dataclass(frozen=True)
class Limits:
    per_minute: int
    per_day: int
    concurrency: int


def lease_set_key(subject: str) -> str:
    """The subject's concurrency leases: a sorted set of lease ids scored by their expiry. The
    hash tag keeps one subject's keys in one slot should Redis ever be a cluster."""
    return f"rl:{{{subject}}}:c"


def stop_marker(subject: str) -> str:
    """The Redis key holding the moment (Unix ms) a key stops working; never set for users."""
    return f"rl:{{{subject}}}:stops"


# --- The atomic step (Lua: Redis runs it, or fakeredis in-process without REDIS_URL)

# KEYS: minute window, day window, lease set, the key's stop marker (`apikeys.key_stops`).
# ARGV: now_ms, minute limit, day limit, concurrency limit, minute ttl s, day ttl s, lease id,
#       lease expiry ms, then any lease ids this subject's finished requests release
#       (`apikeys.lease_releases`: freed first, whatever the verdict).
# Returns {verdict, minute count, day count, in flight}; verdict 0 admitted, 1 minute, 2 day,
# 3 concurrency, 4 the key has stopped working. Only an admitted request is counted.
ACQUIRE_LUA = """
local now = tonumber(ARGV[1])
if #ARGV > 8 then redis.call('ZREM', KEYS[3], unpack(ARGV, 9)) end
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
class Step:
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
            lease_set_key(self.subject),
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


class InProcessRedis:
    """The Redis of a gateway started without REDIS_URL: fakeredis (with Lua through lupa) in this
    process's memory, shared by its sync and async clients. Its data lives as long as the default
    cache: tests reset both with `cache.clear()`."""

    GENERATION_KEY = "limiter:local-generation"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation: str | None = None
        self._client: redis.Redis | None = None

    def client(self) -> redis.Redis:
        if self._client is None:
            with self.lock:
                if self._client is None:
                    # Here, not at the top: only a gateway without REDIS_URL runs it, and the
                    # import costs every production worker memory (~4 MB) for nothing.
                    import fakeredis

                    self._client = fakeredis.FakeRedis()
        return self._client

    def follow_cache(self) -> None:
        client = self.client()
        with self.lock:
            marker = cache.get(self.GENERATION_KEY)
            if marker is None or marker != self.generation:
                client.flushall()
                self.generation = uuid.uuid4().hex
                cache.set(self.GENERATION_KEY, self.generation, None)


in_process = InProcessRedis()


# --- Redis clients: one per process (the async one per event loop, as its connections are)


@dataclass(frozen=True)
class SyncRedis:
    client: redis.Redis
    acquire: Any
    renew: Any


@dataclass(frozen=True)
class AsyncRedis:
    client: aredis.Redis
    acquire: Any
    renew: Any


_sync_clients: dict[str, SyncRedis] = {}
_clients_lock = threading.Lock()
_breaker = {"open_until": 0.0, "failures": 0.0}
# RuntimeError: under uvloop (what uvicorn and gunicorn's UvicornWorker run), a write on a
# connection Redis reset raises "unable to perform operation on <TCPTransport closed=True>",
# which redis-py lets through; without it here a Redis restart answered 500 instead of the policy.
REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError, RuntimeError)


def _client_options() -> dict[str, Any]:
    return {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT,
        "health_check_interval": 30,
    }


def sync_redis() -> SyncRedis:
    """This process's Redis client for synchronous code (thread-safe connection pool); the
    in-process one without REDIS_URL."""
    url = settings.REDIS_URL
    found = _sync_clients.get(url)
    if found is None:
        with _clients_lock:
            found = _sync_clients.get(url)
            if found is None:
                client: redis.Redis = (
                    redis.Redis.from_url(url, **_client_options()) if url else in_process.client()
                )
                found = SyncRedis(
                    client, client.register_script(ACQUIRE_LUA), client.register_script(RENEW_LUA)
                )
                _sync_clients[url] = found
    return found


def async_redis() -> AsyncRedis:
    """This event loop's asyncio Redis client and the limiter's scripts on it (one pool per loop,
    shared with the cache: `timepoint_billing.async_cache.loop_client`). Not for the in-process
    Redis: it answers at once, so async code calls it through `sync_redis`. A slow reply is
    judged by `_Watch`, not by the client's timeouts (LIMITER_WAIT_SECONDS)."""
    url = settings.REDIS_URL
    return AsyncRedis(
        async_cache.loop_client(url),
        async_cache.loop_script(url, ACQUIRE_LUA),
        async_cache.loop_script(url, RENEW_LUA),
    )


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
        except REDIS_ERRORS as exc:
            logger.warning({"event": "limiter_redis_probe_failed", "error": repr(exc)})
            return False
        finally:
            self.finished = time.monotonic()


_probe = _HealthProbe()


class _Watch:
    """Watches one limiter call on the event loop without a task or a timeout of its own: after
    REDIS_SOCKET_TIMEOUT it asks `_probe`; a failed PING cancels the call ("down"), otherwise the
    call may run until LIMITER_WAIT_SECONDS ("busy")."""

    def __init__(self, loop: asyncio.AbstractEventLoop, call: asyncio.Future[Any]) -> None:
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


class Shed(Exception):
    """The limiter could not answer this request: `reason` "down" (Redis) or "busy" (us)."""

    def __init__(self, reason: str, error: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


background: set[asyncio.Future[Any]] = set()


def _release_if_admitted(step: Step, call: asyncio.Future[Any]) -> None:
    """The request was cancelled (the client left) while its script ran: if the script admitted
    it, free the slot now rather than after the lease's TTL."""
    if call.cancelled() or call.exception() is not None or int(call.result()[0]) != 0:
        return
    lease_key = lease_set_key(step.subject)
    release: asyncio.Future[Any] = asyncio.ensure_future(
        async_redis().client.zrem(lease_key, step.lease_id)
    )
    background.add(release)
    release.add_done_callback(background.discard)


async def acquire_on_redis(step: Step, releasing: list[str]) -> list[Any]:
    """Run the script, freeing the subject's leases `releasing` in it; raise `Shed` when the
    limiter cannot give this request an answer."""
    loop = asyncio.get_running_loop()
    args = step.args()
    args.extend(releasing)
    client = async_redis()
    call = redis_batches.batched(client.client, client.acquire, step.keys(), args)
    watch = _Watch(loop, call)
    try:
        # Shielded: a request cancelled here must not cut the script off mid-reply.
        return list(await asyncio.shield(call))
    except asyncio.CancelledError:
        if watch.reason is None:
            call.add_done_callback(functools.partial(_release_if_admitted, step))
            raise
        raise Shed(watch.reason) from None
    except (TimeoutError, redis.TimeoutError) as exc:
        raise Shed("busy", exc) from exc  # LIMITER_WAIT_SECONDS passed: no verdict on Redis
    except redis.ConnectionError as exc:
        if "No connection available" in str(exc):
            raise Shed("busy", exc) from exc  # waited that long for a pooled connection
        raise
    finally:
        watch.stop()


def redis_available() -> bool:
    return time.monotonic() >= _breaker["open_until"]


def redis_answered() -> None:
    _breaker["failures"] = 0.0


def open_breaker() -> None:
    _breaker["open_until"] = time.monotonic() + BREAKER_SECONDS
    _breaker["failures"] = 0.0


def redis_failed(exc: BaseException, step: Step) -> None:
    """This request gets the failure policy. The breaker (Redis skipped for BREAKER_SECONDS)
    opens only after BREAKER_FAILURES failures in a row: one reset connection is not an outage."""
    _breaker["failures"] += 1
    if _breaker["failures"] >= BREAKER_FAILURES:
        open_breaker()
    logger.warning(
        {"event": "limiter_redis_unavailable", "subject": step.subject, "error": repr(exc)}
    )


def reset_breaker() -> None:
    """Forget a recent Redis failure (tests switch REDIS_URL between a dead and a live server)."""
    _breaker["open_until"] = 0.0
    _breaker["failures"] = 0.0
