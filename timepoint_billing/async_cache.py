"""The shared cache from `async def` code, without blocking the event loop (issue 13 point 6).

Django's cache API is synchronous, and so is django-redis: called from an async view it waits for
Redis with the whole worker's event loop stopped (up to the socket timeout when Redis hangs), and
Django's own `aget`/`aset` only move that call to a thread. Here the same cache is read and written
through a `redis.asyncio` client instead, one per event loop (its connections belong to the loop),
with django-redis's own key function and value encoding: what the async side writes, the sync
side (`django.core.cache.cache`: the grant worker, the admin, tests) reads, and back.

Without Redis the default cache is the in-process local-memory cache: a dict under a lock, no
I/O, so it is called directly.

Failure rules, as django-redis's IGNORE_EXCEPTIONS gives the sync side: `get` answers a miss and
`set` does nothing when Redis fails or takes longer than REDIS_SOCKET_TIMEOUT (a cached answer
is only ever a shortcut). `script` (state that must not be guessed, such as credit reservations)
raises `CacheUnavailable`, waits up to its caller's patience and is never retried: a retried
script could apply twice.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis
from django.conf import settings
from django.core.cache import caches
from redis.backoff import NoBackoff
from redis.retry import Retry

from timepoint_billing import redis_batches

logger = logging.getLogger("timepoint.cache")

# RuntimeError: uvloop's "unable to perform operation on <TCPTransport closed=True>" after a
# reset (see apikeys/limits.py).
_ERRORS = (redis.RedisError, OSError, TimeoutError, RuntimeError)


class CacheUnavailable(Exception):
    """The shared cache did not answer a call whose answer cannot be guessed."""


@dataclass
class _LoopClient:
    client: aredis.Redis
    scripts: dict[str, Any] = field(default_factory=dict)


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _LoopClient]] = (
    weakref.WeakKeyDictionary()
)


def redis_location() -> str | None:
    """The default cache's Redis URL (its primary), or None for the in-process cache."""
    config = settings.CACHES["default"]
    if config["BACKEND"] != "django_redis.cache.RedisCache":
        return None
    location = config["LOCATION"]
    first = location[0] if isinstance(location, list | tuple) else str(location).split(",")[0]
    return str(first).strip()


def _loop_client(url: str) -> _LoopClient:
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    found = per_loop.get(url)
    if found is None:
        # Timeouts of LIMITER_WAIT_SECONDS, not REDIS_SOCKET_TIMEOUT: measured on a busy event
        # loop they say more about the gateway than about Redis. Callers bound each call
        # themselves (`asyncio.timeout` here, the limiter's `_Watch`). A pool that waits for a free
        # connection: redis-py's default async pool raises as soon as its connections are in
        # use, which a burst on one loop turned into "Redis is down". No retries (redis-py's
        # default without a `retry`, said here): a script retried after its reply was lost could
        # apply twice.
        patience = max(settings.LIMITER_WAIT_SECONDS, settings.REDIS_SOCKET_TIMEOUT)
        pool = aredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=patience,
            socket_timeout=patience,
            socket_connect_timeout=patience,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 0),
        )
        found = per_loop[url] = _LoopClient(aredis.Redis(connection_pool=pool))
    return found


def loop_client(url: str) -> aredis.Redis:
    """This event loop's asyncio client for `url` (its connections belong to the loop), shared
    by the limiter and the cache: one pool per loop and URL."""
    return _loop_client(url).client


def loop_script(url: str, source: str) -> Any:
    """`source` registered once on this loop's client for `url` (EVALSHA, EVAL when unknown)."""
    found = _loop_client(url)
    runner = found.scripts.get(source)
    if runner is None:
        runner = found.scripts[source] = found.client.register_script(source)
    return runner


def make_key(key: str) -> str:
    """The key as the default cache stores it (prefix and version included)."""
    return str(caches["default"].make_key(key))


async def get(key: str) -> Any:
    """The cached value, or None on a miss or when the cache does not answer in time."""
    url = redis_location()
    if url is None:
        return caches["default"].get(key)
    backend: Any = caches["default"]
    try:
        # Sent with the other reads and limiter scripts of this turn of the loop (one pipeline).
        reply = redis_batches.batched_command(_loop_client(url).client, "GET", make_key(key))
        async with asyncio.timeout(settings.REDIS_SOCKET_TIMEOUT):
            raw = await reply  # a read: dropped when this request stops waiting for it
        return None if raw is None else backend.client.decode(raw)
    except _ERRORS as exc:
        logger.warning({"event": "cache_unavailable", "op": "get", "error": repr(exc)})
        return None
    except Exception as exc:  # a value this code cannot decode: a miss, as django-redis has it
        logger.warning({"event": "cache_undecodable", "key": key, "error": repr(exc)})
        return None


async def set(key: str, value: Any, seconds: float) -> None:
    """Store `value` for `seconds`; a cache that does not answer in time is skipped."""
    url = redis_location()
    if url is None:
        caches["default"].set(key, value, seconds)
        return
    backend: Any = caches["default"]
    try:
        async with asyncio.timeout(settings.REDIS_SOCKET_TIMEOUT):
            await _loop_client(url).client.set(
                make_key(key), backend.client.encode(value), px=max(1, int(seconds * 1000))
            )
    except _ERRORS as exc:
        logger.warning({"event": "cache_unavailable", "op": "set", "error": repr(exc)})


async def script(source: str, *, keys: list[str], args: list[Any], patience: float) -> Any:
    """Run a Lua script on the cache's Redis (keys through `make_key`), waiting up to `patience`
    seconds; `CacheUnavailable` when Redis refuses, fails or takes longer. Redis only: callers
    keep an in-process equivalent for the local-memory cache."""
    url = redis_location()
    if url is None:
        raise CacheUnavailable("the default cache is not Redis")
    runner = loop_script(url, source)
    try:
        async with asyncio.timeout(patience):
            return await runner(keys=[make_key(k) for k in keys], args=args)
    except _ERRORS as exc:
        raise CacheUnavailable(repr(exc)) from exc
