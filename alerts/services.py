"""Everything in alerts that changes state: the thresholds watched (the user's low-balance
alert, and their auto-recharge's), the balance checks after charged generations, crossings (one
per fall below a threshold) and the emails owed (an outbox any app's rows may use).

1. A settled generation that was charged calls `generation_charged` in its settle transaction:
   one UPDATE marks the user's watches `check_due` (nothing for users without one).
2. The background worker (`low_balance_checks_due`, each `run_grants` pass) claims each user's
   due check (one worker per check), reads the balance from Flash once and calls `balance_seen`.
3. `balance_seen` re-arms each watch at or above its threshold; below it, the one process whose
   conditional UPDATE disarms an armed watch records the crossing, in one transaction with what
   it calls for: an alert's `credits.low` webhook and email (an outbox row); for an
   auto-recharge, `signals.balance_crossed`, on which payments records the recharge. A grant
   landing also reports the balance it left (`balance_seen`), so a top-up re-arms the watches
   and clears the portal's banner.
4. The worker sends each email once its row is committed (`emails_send_due`), retrying with
   backoff while the SMTP server fails, with one Message-ID per row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import User
from alerts.models import EmailOutbox, EmailState, LowBalanceAlert, LowBalanceCrossing, WatchPurpose
from alerts.signals import balance_crossed
from timepoint_billing.errors import ApiError, BadRequest
from upstreams import flash
from webhooks import services as webhooks
from webhooks.models import EventType

logger = logging.getLogger("timepoint.alerts")

MAX_THRESHOLD = 10_000_000
EMAIL_LEASE = timedelta(minutes=2)
Row = TypeVar("Row", bound=EmailOutbox)


def alert_threshold_set(*, user: User, threshold: int | None) -> LowBalanceAlert | None:
    """Set the user's low-balance alert threshold (credits), or remove it (None). Already below
    it, only a later fall after a top-up alerts."""
    return watch_set(user=user, purpose=WatchPurpose.ALERT, threshold=threshold)


def watch_set(
    *, user: User, purpose: str, threshold: int | None, cross_if_below: bool = False
) -> LowBalanceAlert | None:
    """Watch the user's balance against `threshold` for `purpose`, or stop (None). A new or
    changed threshold is armed by the balance now: already below it, only a later fall after a
    top-up crosses it — unless `cross_if_below`, when it crosses at once (an auto-recharge turned
    on below its threshold buys its pack now). When Flash does not answer it is armed (a
    crossing too many beats a silent zero)."""
    if threshold is None:
        LowBalanceAlert.objects.filter(user=user, purpose=purpose).delete()
        return None
    if not 0 < threshold <= MAX_THRESHOLD:
        raise BadRequest(
            f"threshold must be between 1 and {MAX_THRESHOLD} credits.", code="invalid_request"
        )
    armed, balance = True, None
    seen_at = timezone.now()  # before the read: a reading is never newer than it claims
    if user.flash_user_id:
        try:
            balance = flash.balance(flash_user_id=user.flash_user_id)["balance"]
        except ApiError:
            balance = None
        armed = balance is None or balance >= threshold or cross_if_below
    watch, _ = LowBalanceAlert.objects.update_or_create(
        user=user,
        purpose=purpose,
        defaults={
            "threshold": threshold,
            "armed": armed,
            "last_balance": None if armed else balance,
            "last_checked_at": None if armed else seen_at,
        },
    )
    logger.info(
        {
            "event": "low_balance_threshold_set",
            "user": user.pk,
            "purpose": purpose,
            "threshold": threshold,
        }
    )
    if armed and balance is not None:
        _reading_apply(watch, balance, seen_at)  # below it (cross_if_below): the crossing, now
        watch.refresh_from_db()
    return watch


def generation_charged(*, user_id: int) -> None:
    """A charged generation settled: the worker reads the user's balance on its next pass (for
    every watch of theirs)."""
    LowBalanceAlert.objects.filter(user_id=user_id).update(check_due=True)


def balance_seen(
    *, user_id: int, balance: int, seen_at: datetime | None = None
) -> list[LowBalanceCrossing]:
    """The user's Flash balance was `balance` at `seen_at` (default now), applied to each of
    their watches: at or above a threshold re-arms it; below it while armed is a crossing,
    recorded exactly once across processes (with what it calls for). A reading older than one
    already applied is ignored. Returns the crossings this call recorded."""
    seen_at = seen_at or timezone.now()
    crossings = []
    for watch in LowBalanceAlert.objects.filter(user_id=user_id):
        crossing = _reading_apply(watch, balance, seen_at)
        if crossing is not None:
            crossings.append(crossing)
    return crossings


def _reading_apply(
    watch: LowBalanceAlert, balance: int, seen_at: datetime
) -> LowBalanceCrossing | None:
    fresh = Q(last_checked_at__isnull=True) | Q(last_checked_at__lte=seen_at)
    reading = {"last_balance": balance, "last_checked_at": seen_at}
    if balance >= watch.threshold:
        LowBalanceAlert.objects.filter(fresh, pk=watch.pk).update(armed=True, **reading)
        return None
    user_id = watch.user_id
    with transaction.atomic():
        won = LowBalanceAlert.objects.filter(
            fresh, pk=watch.pk, armed=True, threshold=watch.threshold
        ).update(armed=False, **reading)
        if not won:
            LowBalanceAlert.objects.filter(fresh, pk=watch.pk).update(**reading)
            return None
        email = ""
        if watch.purpose == WatchPurpose.ALERT:
            email = User.objects.filter(pk=user_id).values_list("email", flat=True).first() or ""
        crossing = LowBalanceCrossing.objects.create(
            user_id=user_id,
            purpose=watch.purpose,
            threshold=watch.threshold,
            balance=balance,
            email_to=email,
            email_state=EmailState.PENDING if email else EmailState.NONE,
        )
        if watch.purpose == WatchPurpose.ALERT:
            webhooks.event_emit(
                user_id=user_id,
                type=EventType.CREDITS_LOW,
                data={"balance": balance, "threshold": watch.threshold},
                dedupe_key=f"credits.low:{crossing.pk}",
            )
        else:
            balance_crossed.send(sender=LowBalanceCrossing, crossing=crossing)
    logger.info(
        {
            "event": "low_balance_crossing",
            "user": user_id,
            "purpose": watch.purpose,
            "balance": balance,
            "threshold": watch.threshold,
        }
    )
    return crossing


def low_balance_checks_due(*, limit: int = 100) -> int:
    """Read the balance of every user whose charged generation settled since the last check
    (once per user, whatever number of watches they have), and apply it. Returns how many
    checks this call claimed."""
    due = LowBalanceAlert.objects.filter(check_due=True).order_by("user_id")
    user_ids = list(due.values_list("user_id", flat=True).distinct()[:limit])
    claimed = 0
    for user_id in user_ids:
        if not LowBalanceAlert.objects.filter(user_id=user_id, check_due=True).update(
            check_due=False
        ):
            continue  # another worker took it
        claimed += 1
        flash_user_id = User.objects.filter(pk=user_id).values_list("flash_user_id", flat=True)
        seen_at = timezone.now()  # before the read: a reading is never newer than it claims
        try:
            balance = flash.balance(flash_user_id=flash_user_id.first() or "")["balance"]
        except ApiError as exc:
            generation_charged(user_id=user_id)  # checked again on the next pass
            logger.warning(
                {"event": "low_balance_check_failed", "user": user_id, "error": exc.code}
            )
            continue
        balance_seen(user_id=user_id, balance=balance, seen_at=seen_at)
    return claimed


def _email_due_q(now: datetime) -> Q:
    return Q(email_state=EmailState.PENDING, email_next_attempt_at__lte=now) | Q(
        email_state=EmailState.SENDING, email_claimed_at__lt=now - EMAIL_LEASE
    )


def emails_send_due(
    *, model: type[Row], compose: Callable[[Row], EmailMessage], limit: int = 20
) -> int:
    """Send the email every due row of `model` owes (claimed by one worker each), as `compose`
    writes it; the Message-ID is the row's. Returns how many were sent."""
    now = timezone.now()
    ids = list(
        model._default_manager.filter(_email_due_q(now))
        .order_by("email_next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    sent = 0
    for row_id in ids:
        claimed_at = timezone.now()
        if not model._default_manager.filter(_email_due_q(claimed_at), pk=row_id).update(
            email_state=EmailState.SENDING,
            email_claimed_at=claimed_at,
            email_attempts=F("email_attempts") + 1,
        ):
            continue
        row = model._default_manager.get(pk=row_id)
        mine = model._default_manager.filter(
            pk=row_id, email_state=EmailState.SENDING, email_claimed_at=claimed_at
        )
        try:
            message = compose(row)
            message.to = [row.email_to]
            message.from_email = settings.DEFAULT_FROM_EMAIL
            message.extra_headers["Message-ID"] = row.message_id
            message.send(fail_silently=False)
        except Exception as exc:  # smtplib and socket errors alike: the outbox keeps it
            give_up = row.email_attempts >= settings.ALERT_EMAIL_MAX_ATTEMPTS
            delay = settings.ALERT_EMAIL_RETRY_SECONDS * 2 ** (row.email_attempts - 1)
            mine.update(
                email_state=EmailState.FAILED if give_up else EmailState.PENDING,
                email_next_attempt_at=timezone.now() + timedelta(seconds=delay),
                email_last_error=f"{type(exc).__name__}: {exc}"[:500],
            )
            logger.warning(
                {"event": "email_failed", "row": f"{model.__name__}:{row_id}", "error": str(exc)}
            )
            # The SMTP server is likely down: the rest wait for the next pass rather than each
            # holding the worker for EMAIL_TIMEOUT now.
            break
        mine.update(email_state=EmailState.SENT, email_sent_at=timezone.now(), email_last_error="")
        sent += 1
    return sent


def portal_url(page: str) -> str:
    """The portal page `page` (e.g. "billing/") as emails link to it."""
    return settings.PORTAL_URL.rstrip("/") + "/" + page


def _crossing_email(crossing: LowBalanceCrossing) -> EmailMessage:
    context = {"crossing": crossing, "billing_url": portal_url("billing/")}
    return EmailMessage(
        subject=render_to_string("alerts/low_balance_subject.txt", context).strip(),
        body=render_to_string("alerts/low_balance_email.txt", context),
    )


def low_balance_emails_send_due(*, limit: int = 20) -> int:
    """Send the email of every alert crossing that is due. Returns how many were sent."""
    return emails_send_due(model=LowBalanceCrossing, compose=_crossing_email, limit=limit)
