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
from payments.services import grant_create
from relay import flash
from relay.models import AsyncGeneration, AsyncGenerationState
from relay.paths import FLASH_TIMEPOINT_ID
from relay.services import (
    REFUND_GRANT_SOURCE,
    Generation,
    RelayCall,
    generation_release,
    outbound_generation_body,
)
from timepoint_billing.db import run_db
from timepoint_billing.errors import ApiError, UpstreamError

logger = logging.getLogger("timepoint.relay")

FINAL_STATUSES = ("completed", "failed")
# Flash's own refund of a background run that raised (app/api/v1/timepoints.py).
FLASH_REFUND_PREFIX = "Refund (background generation failed): "
LEDGER_PAGES = 10  # Flash's ledger read back at most 1 000 rows deep
SETTLE_AFTER_SECONDS = 5  # the worker leaves fresh generations to their pollers


def refund_key(timepoint_id: str) -> str:
    return f"refund:tp:{timepoint_id}"


def _record(generation: Generation, timepoint_id: str) -> None:
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
        response = await flash.acall(
            "POST",
            "/api/v1/timepoints/generate",
            user_id=generation.flash_user_id,
            json=outbound_generation_body(generation),
            extra_headers={"X-Request-ID": generation.request_id},
        )
        if response.status_code != 200:
            raise flash.error_from_flash(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise UpstreamError("Flash returned an invalid answer.") from exc
        timepoint_id = str(body.get("id") or "") if isinstance(body, dict) else ""
        if not FLASH_TIMEPOINT_ID.fullmatch(timepoint_id):
            raise UpstreamError("Flash returned an invalid answer.")
        timepoint_id = timepoint_id.lower()
        call.credits_spent = generation.cost  # Flash charged on accepting
        try:
            await run_db(_record, generation, timepoint_id)
        except Exception:
            # The generation runs and is charged either way; unrecorded, a failed run would not
            # be refunded by the gateway: say so loudly for staff (the reconcile view shows it).
            logger.exception(
                "async generation not recorded",
                extra={"request_id": generation.request_id, "timepoint_id": timepoint_id},
            )
    finally:
        # Flash's charge is committed when it answers: the held credits are given back now.
        generation_release(generation)
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
            row.state = AsyncGenerationState.COMPLETED
        else:
            User.objects.select_for_update().filter(pk=row.user_id).first()
            if _flash_refunded(row):
                row.state = AsyncGenerationState.REFUNDED_BY_FLASH
            else:
                grant_create(
                    key=refund_key(timepoint_id),
                    user=row.user,
                    amount=row.cost,
                    transaction_type="refund",
                    label=f"refund: generation failed ({row.preset})",
                    source=REFUND_GRANT_SOURCE,
                    reason="generation failed",
                )
                row.state = AsyncGenerationState.REFUNDED
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
