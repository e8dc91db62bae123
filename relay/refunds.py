"""Generations whose outcome the gateway did not learn: recorded before Flash is called, settled
from Flash's answer, or found out from Flash afterwards and refunded exactly once.

Flash charges a generation when it starts and keeps the charge when the run fails (upstreams.md
A4, pitfall 9); its own refunds on a stream are overwritten by the stream's late charge write-back
(pitfall 11). So every forwarded generation follows the outbox discipline of the grant outbox:

1. `forwarded_record` commits a `ForwardedGeneration` *before* the call (state `in_flight`).
2. When Flash's answer arrives, `forwarded_settle` records the outcome: completed (charged),
   failed (a refund grant is recorded in the payments outbox in the same transaction) or not
   charged (Flash refused it or refunded it itself).
3. When the answer is lost after the request was sent (a cut connection, a read timeout, a
   truncated or unparseable body, a stream cut before its final event) `forwarded_unknown` marks
   it `unknown` and the client gets `upstream_outcome_unknown` with the request id. A row left
   `in_flight` by a gateway worker that died mid-call counts as unknown once no generation can
   still be running.
4. The background worker (`manage.py run_grants`) calls `generations_reconcile_due`
   (`relay.reconcile`): it claims each due row (one worker per row), looks for the generation's
   timepoint in Flash (the user's timepoints for sync/async, the public feed for streams, which
   Flash saves without an owner), waits while it is still running, and settles: a completed
   timepoint is charged; a failed one, or none by the deadline, is refunded by what Flash's credit
   history shows it kept.

Refunds are keyed on what Flash identifies: `refund:tp:<timepoint id>` when Flash returned or the
worker found a timepoint, else `refund:<request id>`. A timepoint settles at most one generation
(unique column), so the answer path and the reconcile path can never both pay for one generation,
and `grant_create` is idempotent by key, so a retried or duplicated worker cannot either.

Other routes that forward a charged generation call `forwarded_record` before the call and
`forwarded_settle` / `forwarded_unknown` after it. An asynchronous generation Flash accepted is
marked `forwarded_started` (its timepoint id, still in flight): its run may outlast the deadline
below, so `relay.async_generation` settles it through `forwarded_settle` when the run ends, and
the reconcile worker leaves it alone.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import aiohttp
import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from alerts import services as alerts
from apikeys import budgets
from metering.services import usage_credits_set
from payments.models import GrantSource
from payments.services import grant_create
from relay.models import ForwardedGeneration, Outcome, OutcomeState
from timepoint_billing.db import row_insert
from timepoint_billing.errors import ApiError
from upstreams.http import PoolTimeout

logger = logging.getLogger("timepoint.relay")


class OutcomeUnknown(ApiError):
    """Flash received the generation but its answer was lost: 502 (504 for a timeout)."""

    status_code = 502
    default_code = "upstream_outcome_unknown"


def outcome_unknown_error(request_id: str, *, timed_out: bool) -> OutcomeUnknown:
    return OutcomeUnknown(
        "Flash received this generation but its answer was lost. The gateway is checking its "
        "outcome with Flash: a generation that completed is in your timepoints, one that failed "
        f"is refunded automatically. Quote request id {request_id} if you contact support.",
        status_code=504 if timed_out else 502,
        extra={"request_id": request_id},
    )


def request_was_sent(exc: BaseException) -> bool:
    """Whether a failed call may have reached Flash. Only a connection never made (refused,
    unresolvable, connect timeout) or a pool that never gave a connection proves it did not."""
    cause = exc.__cause__ if isinstance(exc, ApiError) else exc
    never_sent = (
        aiohttp.ClientConnectorError,
        aiohttp.ConnectionTimeoutError,
        PoolTimeout,
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.PoolTimeout,
    )
    return not isinstance(cause, never_sent)


def refund_key(*, request_id: str, timepoint_id: str | None = None) -> str:
    return f"refund:tp:{timepoint_id}" if timepoint_id else f"refund:{request_id}"


# --- The answer path


def forwarded_record(
    *,
    request_id: str,
    user: User,
    flash_user_id: str,
    route: str,
    query: str,
    preset: str,
    cost: int,
) -> None:
    """Commit the record of a generation about to be forwarded (before the call); a record
    already there for `request_id` is kept as it is."""
    # One INSERT … ON CONFLICT DO NOTHING in autocommit, not get_or_create's SELECT and
    # BEGIN/INSERT/COMMIT, and without the ORM's query compilation: every generation pays this
    # before Flash is called (issue 17).
    row_insert(
        ForwardedGeneration,
        ignore_conflicts=True,
        request_id=request_id,
        user_id=user.pk,
        flash_user_id=flash_user_id,
        route=route,
        query=query,
        preset=preset,
        cost=cost,
    )


def _refund(record: ForwardedGeneration, *, amount: int, timepoint_id: str | None, why: str) -> str:
    key = refund_key(request_id=record.request_id, timepoint_id=timepoint_id)
    grant_create(
        key=key,
        user=record.user,
        amount=amount,
        transaction_type="refund",
        label=f"refund: {why} ({record.preset})",
        source=GrantSource.REFUND,
        reason=why,
    )
    logger.info(
        {
            "event": "generation_refund_recorded",
            "request_id": record.request_id,
            "timepoint_id": timepoint_id,
            "amount": amount,
            "reason": why,
        }
    )
    return key


def _timepoint_taken(record: ForwardedGeneration, timepoint_id: str | None) -> bool:
    return bool(
        timepoint_id
        and ForwardedGeneration.objects.filter(flash_timepoint_id=timepoint_id)
        .exclude(pk=record.pk)
        .exists()
    )


def settle_record(
    record: ForwardedGeneration,
    *,
    outcome: str,
    timepoint_id: str | None,
    refund: int,
    charged: int,
    why: str,
    usage_recorded: bool = True,
) -> ForwardedGeneration:
    """Settle a locked record (inside the caller's transaction). `usage_recorded=False`: the
    call's usage record is written after this (with what it cost), nothing to correct."""
    if _timepoint_taken(record, timepoint_id):
        # Another generation already settled with this timepoint: never twice the same one.
        logger.error(
            {
                "event": "timepoint_already_settled",
                "request_id": record.request_id,
                "tp": timepoint_id,
            }
        )
        timepoint_id = None
    record.refund_key = (
        _refund(record, amount=refund, timepoint_id=timepoint_id, why=why) if refund > 0 else ""
    )
    # The key's monthly budget (`apikeys.budgets`), in the same transaction: its hold becomes
    # what Flash charged (what it kept plus what this refund gives back), and a refund paid here
    # gives those credits back to the key's month. Both the answer path and the reconcile path
    # settle through here, once per record.
    budgets.budget_settle(request_id=record.request_id, charged=charged + refund)
    if refund > 0:
        budgets.budget_refund(request_id=record.request_id)
    record.state = OutcomeState.SETTLED
    record.outcome = outcome
    record.flash_timepoint_id = timepoint_id or None
    record.credits_charged = charged
    record.settled_at = timezone.now()
    record.claimed_at = None
    record.save(
        update_fields=[
            "refund_key",
            "state",
            "outcome",
            "flash_timepoint_id",
            "credits_charged",
            "settled_at",
            "claimed_at",
        ]
    )
    if usage_recorded:
        transaction.on_commit(
            lambda: usage_credits_set(request_id=record.request_id, credits=charged)
        )
    if charged > 0:  # the worker reads the balance for a low-balance alert (if one is set)
        alerts.generation_charged(user_id=record.user_id)
    logger.info(
        {
            "event": "generation_settled",
            "request_id": record.request_id,
            "outcome": outcome,
            "charged": charged,
            "refunded": refund,
        }
    )
    return record


def forwarded_settle(
    *,
    request_id: str,
    outcome: str,
    timepoint_id: str | None = None,
    why: str = "",
    usage_recorded: bool = True,
) -> ForwardedGeneration | None:
    """Flash's answer arrived: record what the generation cost. `failed` records a refund of its
    cost (keyed on the timepoint id when Flash gave one). Settling twice changes nothing.
    `usage_recorded=False` when the call's usage record is not written yet (the answer path)."""
    with transaction.atomic():
        record = (
            ForwardedGeneration.objects.select_for_update().filter(request_id=request_id).first()
        )
        if record is None or record.state == OutcomeState.SETTLED:
            return record
        charged = record.cost if outcome in (Outcome.COMPLETED, Outcome.ABANDONED) else 0
        refund = record.cost if outcome == Outcome.FAILED else 0
        return settle_record(
            record,
            outcome=outcome,
            timepoint_id=timepoint_id,
            refund=refund,
            charged=charged,
            why=why or "generation failed",
            usage_recorded=usage_recorded,
        )


def forwarded_started(*, request_id: str, timepoint_id: str) -> None:
    """Flash accepted an asynchronous generation as `timepoint_id`: still in flight, settled by
    `relay.async_generation` when its run ends, no longer on the reconcile worker's deadline."""
    ForwardedGeneration.objects.filter(request_id=request_id, state=OutcomeState.IN_FLIGHT).update(
        flash_timepoint_id=timepoint_id
    )


def forwarded_unknown(*, request_id: str, error: str) -> None:
    """The answer was lost after the request was sent: the worker will ask Flash."""
    delay = timedelta(seconds=settings.GENERATION_RECONCILE_DELAY_SECONDS)
    ForwardedGeneration.objects.filter(request_id=request_id, state=OutcomeState.IN_FLIGHT).update(
        state=OutcomeState.UNKNOWN, last_error=error[:1000], next_check_at=timezone.now() + delay
    )
    logger.warning(
        {"event": "generation_outcome_unknown", "request_id": request_id, "error": error}
    )
