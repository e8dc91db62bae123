"""Waking the `run_grants` worker: the web process records work (a grant, a Stripe event) in the
outbox and nudges; only the worker calls Flash and Stripe. Also the retry policy both outboxes use.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger("timepoint.payments")

# The cache key `worker_nudge` changes; `run_grants` workers watch it between passes.
WORKER_WAKE_KEY = "payments:worker:wake"


def worker_nudge() -> None:
    """Tell the `run_grants` workers that a grant or a Stripe event was just committed, so one
    wakes now rather than at its next pass. Only the worker calls Flash and Stripe: a web
    process never holds a request (or a thread) on them, and a crash anywhere leaves the row in
    the outbox for the next pass. Best effort: a lost nudge (no shared cache, Redis down) costs
    at most GRANT_WORKER_SLEEP_SECONDS."""
    try:
        cache.set(WORKER_WAKE_KEY, uuid.uuid4().hex, None)
    except Exception:  # the cache is a convenience here, never a reason to fail the request
        logger.warning("worker nudge not sent; the worker finds the work on its next pass")


def worker_wait(*, seconds: float, seen: Any) -> Any:
    """Sleep up to `seconds`, returning early once the wake key differs from `seen`. Returns the
    key's current value (the next call's `seen`)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            current = cache.get(WORKER_WAKE_KEY)
        except Exception:
            current = seen
        if current != seen:
            return current
        left = deadline - time.monotonic()
        if left <= 0:
            return current
        time.sleep(min(settings.GRANT_WORKER_NUDGE_POLL_SECONDS, left))


def backoff_seconds(attempts: int) -> float:
    """How long a failed grant or Stripe event waits before its next attempt (doubling, capped)."""
    base = settings.GRANT_RETRY_BASE_SECONDS * (2 ** max(0, attempts - 1))
    return float(min(settings.GRANT_RETRY_MAX_SECONDS, base))
