"""Keys that stop working, seen by every process within a request.

A revoked key, a rolled key whose grace ended or an expired key stops on every process within a
second, although each process trusts its key lookups for a few seconds (`apikeys.services`):
`key_stops_at` writes the moment into the limiter's Redis, and the limiter script that counts
each request refuses a key past that moment (`apikeys.limits`, verdict 4 → 401
`invalid_api_key`). No extra round trip, no database query per request.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from apikeys.limiter_redis import REDIS_ERRORS, in_process, stop_marker, sync_redis

logger = logging.getLogger("timepoint.limiter")

# How long a stop marker outlives its moment: far longer than any process caches a key lookup.
STOP_MARKER_MARGIN_SECONDS = 120.0


def key_stops_at(*, key_id: int, moment: float | None) -> None:
    """Every gateway process refuses key `key_id` from `moment` (Unix seconds) on, although it may
    hold the key in its lookup cache: the limiter script checks this marker on every request.
    `moment=None` removes the marker (a key made to work again, without an end).

    Kept past the moment for as long as any process may still trust a cached lookup of the key
    (`apikeys.lookup.KEY_CACHE_SECONDS`, with a wide margin). If Redis is unreachable the
    marker is lost and other processes notice within their cache's lifetime (logged)."""
    marker = stop_marker(f"k{key_id}")
    if not settings.REDIS_URL:
        in_process.follow_cache()
    try:
        if moment is None:
            sync_redis().client.delete(marker)
            return
        keep_ms = int((max(0.0, moment - time.time()) + STOP_MARKER_MARGIN_SECONDS) * 1000)
        sync_redis().client.set(marker, int(moment * 1000), px=keep_ms)
    except REDIS_ERRORS as exc:
        logger.warning({"event": "key_stop_marker_failed", "key_id": key_id, "error": repr(exc)})


def key_has_stopped(*, key_id: int) -> bool:
    """Whether `key_stops_at` said key `key_id` no longer works (one Redis read; False when Redis
    cannot be asked, the database then being the authority)."""
    marker = stop_marker(f"k{key_id}")
    now = time.time()
    if not settings.REDIS_URL:
        in_process.follow_cache()
    try:
        moment = sync_redis().client.get(marker)
    except REDIS_ERRORS as exc:
        logger.warning({"event": "key_stop_marker_unreadable", "error": repr(exc)})
        return False
    return moment is not None and int(moment) <= int(now * 1000)
