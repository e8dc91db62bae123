"""Everything in alerts that changes state: the threshold, the balance checks after charged
generations, crossings (one per fall below the threshold) and their emails.

1. A settled generation that was charged calls `generation_charged` in its settle transaction:
   one UPDATE marks the user's alert `check_due` (nothing for users without a threshold).
2. The background worker (`low_balance_checks_due`, each `run_grants` pass) claims each due check
   (one worker per check), reads the balance from Flash and calls `balance_seen`.
3. `balance_seen` re-arms the alert at or above the threshold; below it, the one process whose
   conditional UPDATE disarms an armed alert records the crossing, its `credits.low` webhook and
   its email (an outbox row), all in one transaction. A grant landing also reports the balance
   it left (`balance_seen`), so a top-up re-arms the alert and clears the portal's banner.
4. The worker sends each crossing's email once it is committed (`low_balance_emails_send_due`),
   retrying with backoff while the SMTP server fails, with one Message-ID per crossing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import User
from alerts.models import EmailState, LowBalanceAlert, LowBalanceCrossing
from timepoint_billing.errors import ApiError, BadRequest
from upstreams import flash
from webhooks import services as webhooks
from webhooks.models import EventType

logger = logging.getLogger("timepoint.alerts")

MAX_THRESHOLD = 10_000_000
EMAIL_LEASE = timedelta(minutes=2)


def alert_threshold_set(*, user: User, threshold: int | None) -> LowBalanceAlert | None:
    """Set the user's threshold (credits), or remove it (None). A new or changed threshold is
    armed by the balance now: already below it, only a later fall after a top-up alerts; when
    Flash does not answer it is armed (an alert too many beats a silent zero)."""
    if threshold is None:
        LowBalanceAlert.objects.filter(user=user).delete()
        return None
    if not 0 < threshold <= MAX_THRESHOLD:
        raise BadRequest(
            f"threshold must be between 1 and {MAX_THRESHOLD} credits.", code="invalid_request"
        )
    armed, balance = True, None
    if user.flash_user_id:
        try:
            balance = flash.balance(flash_user_id=user.flash_user_id)["balance"]
        except ApiError:
            balance = None
        armed = balance is None or balance >= threshold
    alert, _ = LowBalanceAlert.objects.update_or_create(
        user=user,
        defaults={
            "threshold": threshold,
            "armed": armed,
            "last_balance": balance,
            "last_checked_at": timezone.now() if balance is not None else None,
        },
    )
    logger.info({"event": "low_balance_threshold_set", "user": user.pk, "threshold": threshold})
    return alert


def generation_charged(*, user_id: int) -> None:
    """A charged generation settled: the worker reads the user's balance on its next pass."""
    LowBalanceAlert.objects.filter(user_id=user_id).update(check_due=True)


def balance_seen(
    *, user_id: int, balance: int, seen_at: datetime | None = None
) -> LowBalanceCrossing | None:
    """The user's Flash balance was `balance` at `seen_at` (default now). At or above the
    threshold re-arms the alert; below it while armed is a crossing, recorded exactly once across
    processes (with its webhook and email). A reading older than one already applied is ignored.
    Returns the crossing this call recorded, if any."""
    seen_at = seen_at or timezone.now()
    fresh = Q(last_checked_at__isnull=True) | Q(last_checked_at__lte=seen_at)
    alert = LowBalanceAlert.objects.filter(user_id=user_id).first()
    if alert is None:
        return None
    reading = {"last_balance": balance, "last_checked_at": seen_at}
    if balance >= alert.threshold:
        LowBalanceAlert.objects.filter(fresh, pk=alert.pk).update(armed=True, **reading)
        return None
    with transaction.atomic():
        won = LowBalanceAlert.objects.filter(
            fresh, pk=alert.pk, armed=True, threshold=alert.threshold
        ).update(armed=False, **reading)
        if not won:
            LowBalanceAlert.objects.filter(fresh, pk=alert.pk).update(**reading)
            return None
        email = User.objects.filter(pk=user_id).values_list("email", flat=True).first() or ""
        crossing = LowBalanceCrossing.objects.create(
            user_id=user_id,
            threshold=alert.threshold,
            balance=balance,
            email_to=email,
            email_state=EmailState.PENDING if email else EmailState.NONE,
        )
        webhooks.event_emit(
            user_id=user_id,
            type=EventType.CREDITS_LOW,
            data={"balance": balance, "threshold": alert.threshold},
            dedupe_key=f"credits.low:{crossing.pk}",
        )
    logger.info(
        {
            "event": "low_balance_crossing",
            "user": user_id,
            "balance": balance,
            "threshold": alert.threshold,
        }
    )
    return crossing


def low_balance_checks_due(*, limit: int = 100) -> int:
    """Read the balance of every user whose charged generation settled since the last check, and
    apply it. Returns how many checks this call claimed."""
    due = list(LowBalanceAlert.objects.filter(check_due=True).values_list("pk", "user_id")[:limit])
    claimed = 0
    for alert_id, user_id in due:
        if not LowBalanceAlert.objects.filter(pk=alert_id, check_due=True).update(check_due=False):
            continue  # another worker took it
        claimed += 1
        flash_user_id = User.objects.filter(pk=user_id).values_list("flash_user_id", flat=True)
        seen_at = timezone.now()  # before the read: a reading is never newer than it claims
        try:
            balance = flash.balance(flash_user_id=flash_user_id.first() or "")["balance"]
        except ApiError as exc:
            LowBalanceAlert.objects.filter(pk=alert_id).update(check_due=True)  # next pass
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


def _email_send(crossing: LowBalanceCrossing) -> None:
    context = {
        "crossing": crossing,
        "billing_url": settings.PORTAL_URL.rstrip("/") + "/billing/",
    }
    message = EmailMessage(
        subject=render_to_string("alerts/low_balance_subject.txt", context).strip(),
        body=render_to_string("alerts/low_balance_email.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[crossing.email_to],
        headers={"Message-ID": crossing.message_id},
    )
    message.send(fail_silently=False)


def low_balance_emails_send_due(*, limit: int = 20) -> int:
    """Send the email of every crossing that is due (claimed by one worker each). Returns how
    many were sent."""
    now = timezone.now()
    ids = list(
        LowBalanceCrossing.objects.filter(_email_due_q(now))
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    sent = 0
    for crossing_id in ids:
        claimed_at = timezone.now()
        if not LowBalanceCrossing.objects.filter(_email_due_q(claimed_at), pk=crossing_id).update(
            email_state=EmailState.SENDING,
            email_claimed_at=claimed_at,
            email_attempts=F("email_attempts") + 1,
        ):
            continue
        crossing = LowBalanceCrossing.objects.get(pk=crossing_id)
        mine = LowBalanceCrossing.objects.filter(
            pk=crossing_id, email_state=EmailState.SENDING, email_claimed_at=claimed_at
        )
        try:
            _email_send(crossing)
        except Exception as exc:  # smtplib and socket errors alike: the outbox keeps it
            give_up = crossing.email_attempts >= settings.ALERT_EMAIL_MAX_ATTEMPTS
            delay = settings.ALERT_EMAIL_RETRY_SECONDS * 2 ** (crossing.email_attempts - 1)
            mine.update(
                email_state=EmailState.FAILED if give_up else EmailState.PENDING,
                email_next_attempt_at=timezone.now() + timedelta(seconds=delay),
                email_last_error=f"{type(exc).__name__}: {exc}"[:500],
            )
            logger.warning(
                {"event": "low_balance_email_failed", "crossing": crossing_id, "error": str(exc)}
            )
            # The SMTP server is likely down: the rest wait for the next pass rather than each
            # holding the worker for EMAIL_TIMEOUT now.
            break
        mine.update(email_state=EmailState.SENT, email_sent_at=timezone.now(), email_last_error="")
        sent += 1
    return sent
