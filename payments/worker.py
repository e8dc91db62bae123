"""Waking the `run_grants` worker: the web process records work (a grant, a Stripe event) in the
outbox and nudges; only the worker calls Flash and Stripe. Also the retry policy both outboxes use.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet

from timepoint_billing.wake import wait_for_wake, wake

# The cache key `worker_nudge` changes; `run_grants` workers watch it between passes.
WORKER_WAKE_KEY = "payments:worker:wake"


def worker_nudge() -> None:
    """Tell the `run_grants` workers that a grant or a Stripe event was just committed, so one
    wakes now rather than at its next pass. Only the worker calls Flash and Stripe: a web
    process never holds a request (or a thread) on them, and a crash anywhere leaves the row in
    the outbox for the next pass. Best effort: a lost nudge (no shared cache, Redis down) costs
    at most GRANT_WORKER_SLEEP_SECONDS."""
    wake(WORKER_WAKE_KEY)


def worker_wait(*, seconds: float, seen: Any) -> Any:
    """Sleep up to `seconds`, returning early once a web process nudged. Returns what the next
    call's `seen` is."""
    return wait_for_wake(WORKER_WAKE_KEY, seconds=seconds, seen=seen)


def outbox_claim(rows: QuerySet[Any], **changes: Any) -> bool:
    """Claim a due outbox row (`rows`: it, filtered on still being due) for this worker by
    applying `changes`. PostgreSQL: `FOR UPDATE SKIP LOCKED` lets parallel workers pass each
    other by. Everywhere: the UPDATE is conditional on the row still being due, so exactly one
    claimer wins. Returns whether this worker won."""
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            if rows.select_for_update(skip_locked=True).first() is None:
                return False
        return bool(rows.update(**changes))


def backoff_seconds(attempts: int) -> float:
    """How long a failed grant or Stripe event waits before its next attempt (doubling, capped)."""
    base = settings.GRANT_RETRY_BASE_SECONDS * (2 ** max(0, attempts - 1))
    return float(min(settings.GRANT_RETRY_MAX_SECONDS, base))
