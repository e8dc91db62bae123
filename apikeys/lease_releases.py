"""Freeing concurrency slots without a round trip of their own on the request path (issue 17).

A py-spy profile of a worker relaying reads at 64 connections spent ~18 % of its CPU writing to
Redis's socket, half of it for the release of each request's lease (a ZREM awaited after the
answer). Now `Lease.release` only queues the release on this event loop, and it reaches Redis
one of two ways:
- carried: the next `limits.acquire` of the same subject on this loop takes its subject's queued
  releases into its own script, which frees them before it counts (one subject's keys share a
  Cluster slot, so a script never touches another subject's keys);
- flushed: whatever is still queued RELEASE_DELAY_SECONDS after the first release queued goes in
  one pipeline from a background task (other subjects, or a quiet loop).

Two releases are not deferred: a request that is being cancelled (its client left) flushes at
once, as the client may retry on another worker; and a lease that took its subject's last slot
(every request of a free key, 1 concurrent) is freed before its answer leaves, as before
(`limits.Lease.release`), so a client that waits for each answer is never refused for a slot
still queued here. Otherwise a slot held a few milliseconds longer only makes the limiter
stricter, never looser: a subject at its concurrency limit may be refused up to
RELEASE_DELAY_SECONDS sooner than it would have been.

A release is never dropped by this queue: one an acquire took and whose script failed goes back
in the queue; a flush that Redis refuses is logged and the lease ends by its TTL, as a lease of
a killed worker does.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from django.conf import settings

from apikeys.limiter_redis import REDIS_ERRORS, background
from timepoint_billing import async_cache

logger = logging.getLogger("timepoint.limiter")

RELEASE_DELAY_SECONDS = 0.005
# Lua's C stack takes `unpack` of at most a few thousand values; a script carries fewer.
MAX_CARRIED = 64


class _Queue:
    """One event loop's releases not yet sent: lease set key → lease ids."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[str, list[str]] = {}
        self.timer: asyncio.Handle | None = None
        self.sending: set[asyncio.Task[None]] = set()

    def add(self, lease_key: str, lease_ids: list[str], at_once: bool) -> None:
        self.pending.setdefault(lease_key, []).extend(lease_ids)
        if at_once:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_soon(self.flush)
        elif self.timer is None:
            self.timer = self.loop.call_later(RELEASE_DELAY_SECONDS, self.flush)

    def flush(self) -> asyncio.Task[None] | None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.pending:
            return None
        batch, self.pending = self.pending, {}
        task = self.loop.create_task(_send(batch))
        for running in (background, self.sending):
            running.add(task)
            task.add_done_callback(running.discard)
        return task


_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = weakref.WeakKeyDictionary()


def _queue() -> _Queue:
    loop = asyncio.get_running_loop()
    queue = _queues.get(loop)
    if queue is None:
        queue = _queues[loop] = _Queue(loop)
    return queue


async def _send(batch: dict[str, list[str]]) -> None:
    try:
        async with async_cache.loop_client(settings.REDIS_URL).pipeline(transaction=False) as pipe:
            for lease_key, lease_ids in batch.items():
                pipe.zrem(lease_key, *lease_ids)
            await pipe.execute()
    except REDIS_ERRORS as exc:
        count = sum(len(ids) for ids in batch.values())
        logger.warning({"event": "lease_release_failed", "leases": count, "error": repr(exc)})


def later(lease_key: str, lease_id: str) -> None:
    """Queue the release of `lease_id` from `lease_key` (a Redis lease set) on this loop."""
    task = asyncio.current_task()
    at_once = task is not None and task.cancelling() > 0
    _queue().add(lease_key, [lease_id], at_once)


def take(lease_key: str) -> list[str]:
    """The queued releases of `lease_key`, for the acquire script to carry (up to MAX_CARRIED).
    The caller gives them back (`put_back`) if its script fails."""
    queue = _queues.get(asyncio.get_running_loop())
    if queue is None:
        return []
    lease_ids = queue.pending.pop(lease_key, None)
    if not lease_ids:
        return []
    if len(lease_ids) > MAX_CARRIED:
        queue.pending[lease_key] = lease_ids[MAX_CARRIED:]
        lease_ids = lease_ids[:MAX_CARRIED]
    return lease_ids


def put_back(lease_key: str, lease_ids: list[str]) -> None:
    """Releases an acquire took whose script may not have run: they go out in the next flush
    (a ZREM sent twice removes nothing the second time)."""
    if lease_ids:
        _queue().add(lease_key, lease_ids, at_once=False)


async def flush() -> None:
    """Send this loop's queued releases now and wait until Redis has answered every release
    sent so far (a worker's shutdown; a test that counts slots in Redis)."""
    queue = _queues.get(asyncio.get_running_loop())
    if queue is not None:
        queue.flush()
        if queue.sending:
            await asyncio.gather(*queue.sending)
