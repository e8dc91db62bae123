"""Waking a background loop from another process: the web process changes a cache key after it
commits work to an outbox, and the loop, sleeping between passes, notices within
GRANT_WORKER_NUDGE_POLL_SECONDS instead of at its next pass. Best effort: without a shared cache
(no REDIS_URL) or with Redis down, the loop finds the work at its next pass anyway."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger("timepoint.worker")


def wake(key: str) -> None:
    """Change `key`, so whoever waits on it wakes."""
    try:
        cache.set(key, uuid.uuid4().hex, None)
    except Exception:  # the cache is a convenience here, never a reason to fail the request
        logger.warning({"event": "worker_nudge_lost", "key": key})


def wait_for_wake(key: str, *, seconds: float, seen: Any) -> Any:
    """Sleep up to `seconds`, returning early once `key` differs from `seen`. Returns the key's
    current value (the next call's `seen`)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            current = cache.get(key)
        except Exception:
            current = seen
        if current != seen:
            return current
        left = deadline - time.monotonic()
        if left <= 0:
            return current
        time.sleep(min(settings.GRANT_WORKER_NUDGE_POLL_SECONDS, left))
