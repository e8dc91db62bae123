"""Asynchronous generation: `POST /generate/async` (Flash `POST /timepoints/generate`), then poll
`GET /timepoints/{id}`.

Priced, reserved and admitted like the sync route (`relay.services`). Flash charges when it
accepts the generation (committed at once, so the reservation is given back as soon as it
answered) and refunds only when the background run raises (upstreams.md A4, pitfall 9): a run that
ends `failed` without raising stays charged. The gateway settles every started generation exactly
once, as it does for a sync run that Flash reports failed:

- `completed` → charged, nothing to do;
- `failed` → refunded once: by Flash when its ledger holds the refund of this run (its background
  handler writes "Refund (background generation failed): <query[:60]>"), else by the gateway
  through the payments grant outbox, keyed `refund:tp:<id>` (a unique key: a second settle
  can never grant twice);
- still `processing` after ASYNC_GENERATION_STALE_SECONDS (Flash's in-memory background task died
  with its process, and Flash never refunds then) → settled as failed.

Like every forwarded generation it is recorded before Flash is called (`relay.refunds`, through
`relay.services.generation_forward`), and its outcome is settled through `relay.refunds`, the one
place that records a generation's charge, its refund grant and the API key's monthly budget
(a refund gives the budget back). A lost answer to the start request is the reconcile worker's
to settle, as for a sync generation; once Flash has answered with the timepoint id, the
settlement here owns it.

A generation is settled when someone polls it and by the grant worker (`run_grants`) for those
nobody polls. The row is locked while it is settled; the check of Flash's ledger and the grant
happen under that lock, and settles of one user's generations are serialised (user row lock), so a
Flash refund is attributed to one generation only.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from relay import refunds
from relay.models import AsyncGeneration, AsyncGenerationState, Outcome
from relay.paths import FLASH_TIMEPOINT_ID
from relay.services import (
    Generation,
    RelayCall,
    generation_forward,
    generation_lost,
    generation_release,
)
from timepoint_billing.db import run_db
from timepoint_billing.errors import ApiError
from upstreams import flash

logger = logging.getLogger("timepoint.relay")

FINAL_STATUSES = ("completed", "failed")
# Flash's own refund of a background run that raised (app/api/v1/timepoints.py).
FLASH_REFUND_PREFIX = "Refund (background generation failed): "
LEDGER_PAGES = 10  # Flash's ledger read back at most 1 000 rows deep
SETTLE_AFTER_SECONDS = 5  # the worker leaves fresh generations to their pollers
# The row's state from the outcome `relay.refunds` settled the generation with.
STATE_OF_OUTCOME = {
    Outcome.COMPLETED: AsyncGenerationState.COMPLETED,
    Outcome.ABANDONED: AsyncGenerationState.COMPLETED,
    Outcome.NOT_CHARGED: AsyncGenerationState.REFUNDED_BY_FLASH,
    Outcome.FAILED: AsyncGenerationState.REFUNDED,
}


@transaction.atomic
def _record(generation: Generation, timepoint_id: str) -> None:
    refunds.forwarded_started(request_id=generation.request_id, timepoint_id=timepoint_id)
    AsyncGeneration.objects.get_or_create(
        timepoint_id=timepoint_id,
        defaults={
            "user": generation.caller.user,
            "flash_user_id": generation.flash_user_id,
            "query": str(generation.payload["query"])[:500],
            "preset": generation.preset,
            "cost": generation.cost,
            "request_id": generation.request_id[:64],
        },
    )


async def generation_start_async(generation: Generation, call: RelayCall) -> dict[str, Any]:
    """Start the generation in Flash for the caller and remember it until it is settled."""
    try:
        body = await generation_forward(
            generation, route="async", path="/api/v1/timepoints/generate"
        )
        timepoint_id = str(body.get("id") or "")
        if not FLASH_TIMEPOINT_ID.fullmatch(timepoint_id):
            # Flash took (and charged) it, but the answer does not say which timepoint it is:
            # the reconcile worker finds it among the user's timepoints.
            await generation_lost(generation, "answer without a timepoint id")
            raise refunds.outcome_unknown_error(generation.request_id, timed_out=False)
        timepoint_id = timepoint_id.lower()
        call.credits_spent = generation.cost  # Flash charged on accepting
        try:
            await run_db(_record, generation, timepoint_id)
        except Exception:
            # The generation runs and is charged either way; its forward record stays in flight
            # without the timepoint, so the reconcile worker settles it after its deadline.
            logger.exception(
                "async generation not recorded",
                extra={"request_id": generation.request_id, "timepoint_id": timepoint_id},
            )
    finally:
        # Flash's charge is committed when it answers: the held credits are given back now.
        await generation_release(generation)
    return {
        "id": timepoint_id,
        "status": "processing",
        "poll_url": f"/api/v1/timepoints/{timepoint_id}",
        "request_context": body.get("request_context"),
    }


def _flash_refunded(row: AsyncGeneration) -> bool:
    """Whether Flash's ledger holds a background-failure refund for this run that no other
    settled generation of the user has already been credited with."""
    description = FLASH_REFUND_PREFIX + row.query[:60]
    found = 0
    for page in range(LEDGER_PAGES):
        rows = flash.credit_history(flash_user_id=row.flash_user_id, limit=100, offset=page * 100)
        found += sum(
            1 for r in rows if r.get("type") == "refund" and r.get("description") == description
        )
        if len(rows) < 100:
            break
    credited = sum(
        1
        for query in AsyncGeneration.objects.filter(
            user_id=row.user_id, state=AsyncGenerationState.REFUNDED_BY_FLASH
        ).values_list("query", flat=True)
        if query[:60] == row.query[:60]
    )
    return found > credited


def async_generation_settle(*, timepoint_id: str, status: str) -> str | None:
    """Settle a started generation whose Flash status is final (or given up on: pass "failed").
    Returns the new state, or None when there was nothing to settle. Safe to call any number of
    times from any process."""
    if status not in FINAL_STATUSES:
        return None
    with transaction.atomic():
        row = (
            AsyncGeneration.objects.select_for_update()
            .filter(timepoint_id=timepoint_id, state=AsyncGenerationState.RUNNING)
            .first()
        )
        if row is None:
            return None
        if status == "completed":
            outcome = Outcome.COMPLETED
        else:
            User.objects.select_for_update().filter(pk=row.user_id).first()
            # Refunded by Flash: charged nothing in the end. Else the gateway refunds it.
            outcome = Outcome.NOT_CHARGED if _flash_refunded(row) else Outcome.FAILED
        # The record made before the call, or (a generation started before such records
        # existed) one made now: either way settled once, in `relay.refunds`.
        refunds.forwarded_record(
            request_id=row.request_id,
            user=row.user,
            flash_user_id=row.flash_user_id,
            route="async",
            query=row.query,
            preset=row.preset,
            cost=row.cost,
        )
        record = refunds.forwarded_settle(
            request_id=row.request_id,
            outcome=outcome,
            timepoint_id=timepoint_id,
            why="generation failed",
        )
        assert record is not None
        row.state = STATE_OF_OUTCOME[Outcome(record.outcome)]
        row.settled_at = timezone.now()
        row.save(update_fields=["state", "settled_at"])
    logger.info(
        {"event": "async_generation_settled", "timepoint_id": timepoint_id, "state": row.state}
    )
    return str(row.state)


def async_generation_running(timepoint_id: str) -> bool:
    return AsyncGeneration.objects.filter(
        timepoint_id=timepoint_id, state=AsyncGenerationState.RUNNING
    ).exists()


def async_generations_settle_due(*, limit: int = 50) -> int:
    """The worker's pass: settle the running generations nobody polled. Returns how many."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.ASYNC_GENERATION_STALE_SECONDS)
    rows = list(
        AsyncGeneration.objects.filter(
            state=AsyncGenerationState.RUNNING,
            created_at__lte=now - timedelta(seconds=SETTLE_AFTER_SECONDS),
        ).order_by("created_at")[:limit]
    )
    settled = 0
    for row in rows:
        try:
            response = flash.call(
                "GET",
                f"/api/v1/timepoints/{row.timepoint_id}",
                user_id=row.flash_user_id,
                params={"full": "false", "include_image": "false"},
            )
            status = ""
            if response.status_code == 200:
                body = response.json()
                status = str(body.get("status") or "") if isinstance(body, dict) else ""
            elif response.status_code != 404:
                continue  # Flash trouble: next pass
            if response.status_code == 404:
                # Erased by its owner while it ran: nothing to read the outcome from. Flash
                # refunded it if it raised (its ledger says so); otherwise it stays charged.
                status = "completed"
            elif status not in FINAL_STATUSES and row.created_at <= stale_before:
                status = "failed"
            if async_generation_settle(timepoint_id=row.timepoint_id, status=status):
                settled += 1
        except (ApiError, ValueError):
            logger.warning("async generation not settled yet", exc_info=True)
    return settled
