"""The exactly-once credit-grant outbox and its delivery to Flash.

Exactly once, against a Flash whose grant endpoint is not idempotent (upstreams.md pitfall 12):
1. A `CreditGrant` with a unique key is committed in the same transaction as its cause (a Stripe
   event, an Apple transaction, a staff action). A duplicate cause finds the existing row.
2. A worker claims the row (pending → sending) so only one process sends it, and sends it with the
   key in Flash's ledger description.
3. When a send's outcome is unknown (timeout, dropped connection, 5xx, crash while sending), the
   next attempt first reads the user's Flash ledger for the key and never resends if it is there.
A grant is sent only while it holds the user's credits (`upstreams.flash_credit_lock`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, When
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from alerts import services as alerts
from payments.models import CreditGrant, GrantSource, GrantState
from payments.worker import backoff_seconds, outbox_claim, worker_nudge
from timepoint_billing.errors import ApiError, BadRequest, UpstreamError
from upstreams import flash
from upstreams.flash_credit_lock import user_credits_give_back, user_credits_take_for_grant
from webhooks import services as webhooks

logger = logging.getLogger("timepoint.payments")

HISTORY_PAGE = 100


def grant_create(
    *,
    key: str,
    user: User,
    amount: int,
    transaction_type: str,
    label: str,
    source: str,
    stripe_event_id: str = "",
    reason: str = "",
    created_by: User | None = None,
) -> tuple[CreditGrant, bool]:
    """Record a grant (idempotent by `key`); once the surrounding transaction commits, the
    `run_grants` worker is nudged to deliver it. Returns the grant and whether this call
    created it."""
    if amount <= 0:
        raise BadRequest("A grant must be a positive number of credits.", code="invalid_amount")
    marker = f"[grant:{key}]"
    grant, created = CreditGrant.objects.get_or_create(
        key=key,
        defaults={
            "user": user,
            "flash_user_id": user.flash_user_id,
            "amount": amount,
            "transaction_type": transaction_type,
            "description": f"{marker} {amount} credits {label}"[:255],
            "source": source,
            "stripe_event_id": stripe_event_id,
            "reason": reason,
            "created_by": created_by,
        },
    )
    if created:
        logger.info({"event": "grant_recorded", "grant": key, "amount": amount, "user": user.pk})
        transaction.on_commit(worker_nudge)
    return grant, created


@transaction.atomic
def grant_manual(
    *, user: User, amount: int, reason: str, staff_user: User, request_key: str = ""
) -> CreditGrant:
    """A staff grant: the same outbox, keyed `manual:<uuid>`.

    `request_key` (a UUID the admin form carries) makes a resubmitted form the same grant."""
    if not reason.strip():
        raise BadRequest("A manual grant needs a reason.", code="invalid_request")
    grant, _ = grant_create(
        key=f"manual:{uuid.UUID(request_key) if request_key else uuid.uuid4()}",
        user=user,
        amount=amount,
        transaction_type="admin_grant",
        label=f"(staff: {reason.strip()})",
        source=GrantSource.MANUAL,
        reason=reason.strip(),
        created_by=staff_user,
    )
    return grant


def grant_retry(*, grant_id: int) -> bool:
    """Staff retry: put a failed / needs-attention grant back in the queue, due now.

    The retry still reconciles first when the earlier outcome is unknown, so it cannot double."""
    updated = CreditGrant.objects.filter(
        pk=grant_id, state__in=[GrantState.FAILED, GrantState.NEEDS_ATTENTION]
    ).update(state=GrantState.PENDING, next_attempt_at=timezone.now(), attempts=0)
    if updated:
        transaction.on_commit(worker_nudge)
    return bool(updated)


def grant_resolve(*, grant_id: int, staff_user: User, note: str) -> bool:
    """Staff settle a failed / needs-attention grant by hand: it leaves the queue for good and is
    never sent. The note says why (who is recorded by the admin log)."""
    if not note.strip():
        raise BadRequest("Resolving a grant needs a note saying why.", code="invalid_request")
    updated = CreditGrant.objects.filter(
        pk=grant_id, state__in=[GrantState.FAILED, GrantState.NEEDS_ATTENTION]
    ).update(
        state=GrantState.RESOLVED,
        last_error=f"resolved by {staff_user.get_username()}: {note.strip()}"[:2000],
        claimed_at=None,
        updated_at=timezone.now(),
    )
    if updated:
        logger.info({"event": "grant_resolved", "grant": grant_id, "staff": staff_user.pk})
    return bool(updated)


def _due_q(now: datetime) -> Q:
    stale = now - timedelta(seconds=settings.GRANT_SENDING_LEASE_SECONDS)
    return Q(state__in=[GrantState.PENDING, GrantState.FAILED], next_attempt_at__lte=now) | Q(
        state=GrantState.SENDING, claimed_at__lt=stale
    )


def _grant_claim(grant_id: int) -> CreditGrant | None:
    """Take the grant for this worker (`outbox_claim`), or None when it is not due or another
    worker has it."""
    now = timezone.now()
    claimed = outbox_claim(
        CreditGrant.objects.filter(_due_q(now), pk=grant_id),
        # A row still "sending" past its lease was abandoned mid-send: outcome unknown.
        outcome_unknown=Case(
            When(state=GrantState.SENDING, then=True), default=F("outcome_unknown")
        ),
        state=GrantState.SENDING,
        claimed_at=now,
        attempts=F("attempts") + 1,
    )
    return CreditGrant.objects.get(pk=grant_id) if claimed else None


def _grant_save(grant: CreditGrant, **fields: Any) -> CreditGrant:
    claimed_at = grant.claimed_at
    for name, value in fields.items():
        setattr(grant, name, value)
    # Only while we still hold the claim: past the lease another worker may have taken it over.
    held = CreditGrant.objects.filter(
        pk=grant.pk, state=GrantState.SENDING, claimed_at=claimed_at
    ).update(**fields, updated_at=timezone.now())
    if not held:
        logger.error({"event": "grant_claim_lost", "grant": grant.key})
    return grant


def _grant_retry_later(grant: CreditGrant, error: str, *, outcome_unknown: bool) -> CreditGrant:
    unknown = outcome_unknown or grant.outcome_unknown
    if grant.attempts >= settings.GRANT_MAX_ATTEMPTS:
        logger.error({"event": "grant_gave_up", "grant": grant.key, "error": error})
        return _grant_save(
            grant,
            state=GrantState.NEEDS_ATTENTION,
            last_error=error,
            outcome_unknown=unknown,
            claimed_at=None,
        )
    delay = backoff_seconds(grant.attempts)
    if unknown:
        # Give a request Flash may still be working on time to land before reading its ledger.
        delay = max(delay, float(settings.GRANT_RECONCILE_DELAY_SECONDS))
    logger.warning({"event": "grant_retry", "grant": grant.key, "error": error, "in": delay})
    return _grant_save(
        grant,
        state=GrantState.FAILED,
        last_error=error,
        outcome_unknown=unknown,
        claimed_at=None,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
    )


def _grant_sent(grant: CreditGrant, balance: Any, note: str = "") -> CreditGrant:
    logger.info({"event": "grant_sent", "grant": grant.key, "how": note or "answered"})
    with transaction.atomic():  # the credits.granted webhook commits with the grant's state
        grant = _grant_save(
            grant,
            state=GrantState.SENT,
            sent_at=timezone.now(),
            flash_balance_after=balance if isinstance(balance, int) else None,
            outcome_unknown=False,
            last_error=note,
            claimed_at=None,
        )
        webhooks.credits_granted(grant=grant)
        if grant.flash_balance_after is not None:  # a top-up re-arms a low-balance alert
            alerts.balance_seen(user_id=grant.user_id, balance=grant.flash_balance_after)
    return grant


def _created_at(row: flash.LedgerEntry) -> datetime | None:
    value = parse_datetime(row["created_at"])
    if value is not None and timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)  # Flash on SQLite omits the offset
    return value


def _ledger_find(grant: CreditGrant) -> flash.LedgerEntry | None:
    """The Flash ledger row carrying this grant's key, or None once older rows are reached."""
    marker = grant.ledger_marker
    horizon = grant.created_at - timedelta(days=1)
    offset = 0
    for _ in range(settings.GRANT_RECONCILE_MAX_PAGES):
        rows = flash.credit_history(
            flash_user_id=grant.flash_user_id, limit=HISTORY_PAGE, offset=offset
        )
        for row in rows:
            if marker in (row["description"] or ""):
                return row
        if len(rows) < HISTORY_PAGE:
            return None
        oldest = _created_at(rows[-1])
        if oldest is not None and oldest < horizon:
            return None
        offset += HISTORY_PAGE
    raise UpstreamError("The Flash ledger is too long to reconcile this grant.")


def grant_deliver(grant_id: int) -> CreditGrant | None:
    """Send one grant to Flash if it is due and nobody else is sending it; safe to call any time,
    from any number of processes. Returns the grant as left, or None when not claimed."""
    grant = _grant_claim(grant_id)
    if grant is None:
        return None
    if not grant.flash_user_id:
        return _grant_save(
            grant,
            state=GrantState.NEEDS_ATTENTION,
            last_error="The user has no Flash account.",
            claimed_at=None,
        )
    token = user_credits_take_for_grant(grant.flash_user_id)
    if token is None:
        # Not a failure: the user's generation would overwrite the balance (pitfall 11).
        return _grant_save(
            grant,
            state=GrantState.PENDING,
            attempts=grant.attempts - 1,
            claimed_at=None,
            next_attempt_at=timezone.now() + timedelta(seconds=settings.GRANT_BUSY_RETRY_SECONDS),
        )
    try:
        return _grant_send(grant)
    finally:
        user_credits_give_back(grant.flash_user_id, token)


def _grant_send(grant: CreditGrant) -> CreditGrant:
    """Reconcile (if an earlier answer was lost), then send; the user's credits are held."""
    if grant.outcome_unknown:
        try:
            row = _ledger_find(grant)
        except ApiError as exc:
            return _grant_retry_later(grant, f"reconcile: {exc.detail_text}", outcome_unknown=True)
        if row is not None:
            return _grant_sent(grant, row["balance_after"], "reconciled from Flash's ledger")
        # Flash never applied it: sending is safe.
    try:
        response = flash.admin_grant(
            flash_user_id=grant.flash_user_id,
            amount=grant.amount,
            transaction_type=grant.transaction_type,
            description=grant.description,
        )
    except ApiError as exc:
        # Refused, reset, timed out: Flash may have applied it before the line went quiet.
        return _grant_retry_later(grant, exc.detail_text, outcome_unknown=True)
    status = response.status_code
    if status == 200:
        try:
            balance = response.json().get("balance")
        except (ValueError, AttributeError):
            balance = None
        return _grant_sent(grant, balance)
    if 400 <= status < 500 and status not in (408, 429):
        # Flash rejected it before applying anything (unknown user, bad key, bad amount).
        return _grant_save(
            grant,
            state=GrantState.NEEDS_ATTENTION,
            last_error=f"Flash answered {status}: {response.text[:300]}",
            claimed_at=None,
        )
    return _grant_retry_later(grant, f"Flash answered {status}", outcome_unknown=True)


def grants_deliver_due(*, limit: int = 100) -> int:
    """Deliver every grant that is due (pending, failed and due again, or abandoned mid-send).
    Returns how many this call claimed."""
    ids = list(
        CreditGrant.objects.filter(_due_q(timezone.now()))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    claimed = 0
    for grant_id in ids:
        if grant_deliver(grant_id) is not None:
            claimed += 1
    return claimed
