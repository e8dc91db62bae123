"""The background worker's reconcile of forwarded generations whose outcome the gateway missed.

`generations_reconcile_due` (run by `manage.py run_grants`) claims each due row (one worker per
row), looks for the generation's timepoint in Flash and settles it through `relay.refunds` (step 4
of the discipline described there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from relay.models import ForwardedGeneration, Outcome, OutcomeState
from relay.refunds import settle_record
from timepoint_billing.errors import ApiError, UpstreamError
from upstreams import flash

logger = logging.getLogger("timepoint.relay")


# Flash's clock and ours may differ; a timepoint or ledger row this much older than the forward
# still belongs to the window searched.
CLOCK_SKEW = timedelta(seconds=60)
PAGE = 100
MAX_PAGES = 10
# Flash's descriptions end with `: <query[:60]>` (charge `Generate (<preset>): …`, its own
# refunds `Refund (<why>): …`), which is how ledger rows are matched to a generation.
QUERY_IN_DESCRIPTION = 60


def _deadline() -> timedelta:
    return timedelta(seconds=settings.GENERATION_OUTCOME_DEADLINE_SECONDS)


def _claim_lease() -> timedelta:
    return timedelta(seconds=settings.GRANT_SENDING_LEASE_SECONDS)


def _due_q(now: datetime) -> Q:
    free = Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - _claim_lease())
    unknown = Q(state=OutcomeState.UNKNOWN, next_check_at__lte=now)
    # A gateway worker killed mid-call never told: once no generation can still be running.
    # (An in-flight row with a timepoint id is an asynchronous run Flash accepted, which
    # `relay.async_generation` settles when it ends: `forwarded_started`.)
    abandoned = Q(
        state=OutcomeState.IN_FLIGHT,
        forwarded_at__lt=now - _deadline(),
        flash_timepoint_id__isnull=True,
    )
    return (unknown | abandoned) & free


def _claim(record_id: int) -> ForwardedGeneration | None:
    now = timezone.now()
    claimed = ForwardedGeneration.objects.filter(_due_q(now), pk=record_id).update(
        claimed_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return None
    return ForwardedGeneration.objects.select_related("user").get(pk=record_id)


def _parse_time(value: Any) -> datetime | None:
    parsed = parse_datetime(str(value or ""))
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)  # Flash on SQLite omits the offset
    return parsed


def _flash_json(path: str, *, user_id: str, params: dict[str, Any] | None = None) -> Any:
    response = flash.call("GET", path, user_id=user_id, params=params)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise flash.error_from_flash(response)
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamError("Flash returned an invalid answer.") from exc


def _find_timepoint(record: ForwardedGeneration) -> dict[str, Any] | None:
    """The generation's timepoint in Flash, or None. Known id: read it. Otherwise the oldest
    timepoint with the same query created since the forward that no other generation claimed:
    the user's own list for sync/async, the public feed for a stream (saved without owner)."""
    if record.flash_timepoint_id:
        body = _flash_json(
            f"/api/v1/timepoints/{record.flash_timepoint_id}", user_id=record.flash_user_id
        )
        return body if isinstance(body, dict) else None
    since = record.forwarded_at - CLOCK_SKEW
    taken = set(
        ForwardedGeneration.objects.filter(
            flash_timepoint_id__isnull=False, forwarded_at__gte=since - _deadline()
        ).values_list("flash_timepoint_id", flat=True)
    )
    path = "/api/v1/timepoints" if record.route == "stream" else "/api/v1/users/me/timepoints"
    found: dict[str, Any] | None = None
    for page in range(1, MAX_PAGES + 1):
        body = _flash_json(
            path, user_id=record.flash_user_id, params={"page": page, "page_size": PAGE}
        )
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise UpstreamError("Flash returned an invalid timepoint list.")
        reached_older = False
        for item in items:  # newest first
            if not isinstance(item, dict):
                continue
            created = _parse_time(item.get("created_at"))
            if created is not None and created < since:
                reached_older = True
                break
            if item.get("query") == record.query and str(item.get("id")) not in taken:
                found = item  # keep going: the oldest match is this generation's
        if reached_older or len(items) < PAGE:
            break
    return found


def _charges_in_ledger(record: ForwardedGeneration) -> int:
    """What Flash's credit history shows it kept for generations of this query since the
    forward: its charges, less its own refunds except on streams (where its refund is
    overwritten by the stream's late charge write-back, pitfall 11)."""
    since = record.forwarded_at - CLOCK_SKEW
    suffix = f": {record.query[:QUERY_IN_DESCRIPTION]}"
    charged = refunded = 0
    for page in range(MAX_PAGES):
        rows = _flash_json(
            "/api/v1/credits/history",
            user_id=record.flash_user_id,
            params={"limit": PAGE, "offset": page * PAGE},
        )
        if not isinstance(rows, list):
            raise UpstreamError("Flash returned an invalid credit history.")
        reached_older = False
        for row in rows:
            if not isinstance(row, dict):
                continue
            created = _parse_time(row.get("created_at"))
            if created is not None and created < since:
                reached_older = True
                break
            description = str(row.get("description") or "")
            if not description.endswith(suffix):
                continue
            amount = int(row.get("amount") or 0)
            if row.get("type") == "generation" and amount < 0:
                charged -= amount
            elif row.get("type") == "refund" and amount > 0 and description.startswith("Refund ("):
                refunded += amount
        if reached_older or len(rows) < PAGE:
            break
    return charged - (0 if record.route == "stream" else refunded)


def _charges_of_others(record: ForwardedGeneration) -> int:
    """Charges in the same window that belong to other generations of the same user and query:
    settled ones that Flash kept charging, and unsettled ones counted as charged (so an
    ambiguous ledger never refunds twice)."""
    since = record.forwarded_at - CLOCK_SKEW
    others = ForwardedGeneration.objects.filter(
        user_id=record.user_id, query=record.query, forwarded_at__gte=since
    ).exclude(pk=record.pk)
    total = 0
    for other in others:
        if other.state == OutcomeState.SETTLED and other.outcome == Outcome.NOT_CHARGED:
            continue
        total += other.cost
    return total


@dataclass
class Verdict:
    outcome: str
    timepoint_id: str | None
    refund: int
    charged: int
    why: str


def _verdict(record: ForwardedGeneration) -> Verdict | None:
    """What happened to the generation, or None while it may still be running."""
    timepoint = _find_timepoint(record)
    timepoint_id = str(timepoint["id"]) if timepoint and timepoint.get("id") else None
    status = timepoint.get("status") if timepoint else None
    if status == "completed":
        return Verdict(Outcome.COMPLETED, timepoint_id, 0, record.cost, "")
    still_running = timepoint is None or status in ("pending", "processing")
    if still_running and timezone.now() < record.forwarded_at + _deadline():
        return None
    kept = _charges_in_ledger(record) - _charges_of_others(record)
    kept = max(0, min(record.cost, kept))
    if kept > 0:
        why = "generation failed" if timepoint else "generation produced nothing"
        return Verdict(Outcome.FAILED, timepoint_id, kept, 0, why)
    return Verdict(Outcome.NOT_CHARGED, timepoint_id, 0, 0, "")


def _later(record: ForwardedGeneration, error: str) -> ForwardedGeneration:
    retry = timedelta(seconds=settings.GENERATION_RECONCILE_RETRY_SECONDS)
    ForwardedGeneration.objects.filter(pk=record.pk, claimed_at=record.claimed_at).update(
        state=OutcomeState.UNKNOWN,
        last_error=error[:1000],
        claimed_at=None,
        next_check_at=timezone.now() + retry,
    )
    return record


def generation_reconcile(record_id: int) -> ForwardedGeneration | None:
    """Find out one generation's outcome from Flash and settle it, if it is due and nobody else
    holds it. Safe to call any time, from any number of processes."""
    record = _claim(record_id)
    if record is None:
        return None
    try:
        verdict = _verdict(record)
    except ApiError as exc:
        return _later(record, f"Flash: {exc.detail_text}")
    if verdict is None:
        return _later(record, "the generation may still be running")
    try:
        with transaction.atomic():
            locked = (
                ForwardedGeneration.objects.select_for_update()
                .filter(pk=record.pk, claimed_at=record.claimed_at)
                .exclude(state=OutcomeState.SETTLED)
                .select_related("user")
                .first()
            )
            if locked is None:  # the lease ran out and another worker took it over
                logger.error({"event": "generation_claim_lost", "request_id": record.request_id})
                return None
            return settle_record(
                locked,
                outcome=verdict.outcome,
                timepoint_id=verdict.timepoint_id,
                refund=verdict.refund,
                charged=verdict.charged,
                why=verdict.why,
            )
    except IntegrityError:  # the same timepoint settled another generation meanwhile
        return _later(record, "timepoint claimed by another generation; checking again")


def generations_reconcile_due(*, limit: int = 50) -> int:
    """Reconcile every due generation; returns how many this call claimed."""
    ids = list(
        ForwardedGeneration.objects.filter(_due_q(timezone.now()))
        .order_by("forwarded_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for record_id in ids if generation_reconcile(record_id) is not None)
