"""Auto-recharge: when a user's Flash balance falls below their threshold, buy their chosen credit
pack with the card saved on their Stripe customer, at most `daily_cap` times in 24 hours.
(Past 400 lines: one money flow, rule → record → charge → answer → webhook, kept in one file so
its exactly-once steps are checked in one reading.)

1. `recharge_rule_set` (portal, API) keeps the rule; turning it on needs a saved card (a pack
   bought at Checkout saves one) and clears the last failure.
2. `recharge_record` runs in the transaction that records a fall below the threshold: one
   `Recharge` row keyed by that fall (unique), or a skipped one past the daily cap. Nothing is
   charged there.
3. The worker (`recharges_charge_due`, each `run_grants` pass) claims each due recharge (one
   worker), stores the card and the pack's Stripe price on it, and creates the off-session
   PaymentIntent with the row's idempotency key. No usable answer (a timeout, a 5xx, a worker
   killed mid-call) → asked again later with the same key and parameters: Stripe makes one
   charge. Past RECHARGE_RETRY_WINDOW_SECONDS (well inside the 24 hours Stripe keeps a key) staff
   decide.
4. `payment_intent.succeeded` grants the pack through the grant outbox (`stripe_records`, keyed
   `stripe:<payment intent>` as a Checkout purchase is); a decline or authentication required —
   the answer, or `payment_intent.payment_failed` / `.requires_action` when the answer was lost —
   fails it once (`recharge_failed`): auto-recharge off, `credits.recharge_failed`, an email.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone
from djstripe.models import Customer

from accounts.models import User
from alerts import services as alerts
from alerts.models import EmailState, LowBalanceAlert, LowBalanceCrossing, WatchPurpose
from payments import selectors, stripe_client
from payments.models import (
    AutoRecharge,
    CatalogueItem,
    CatalogueKind,
    CreditGrant,
    Recharge,
    RechargeState,
)
from payments.worker import backoff_seconds, outbox_claim, worker_nudge
from timepoint_billing.errors import ApiError, BadRequest, Conflict
from webhooks import services as webhooks
from webhooks.models import EventType

logger = logging.getLogger("timepoint.payments")

DUE_STATES = (RechargeState.PENDING, RechargeState.RETRYING)
IN_FLIGHT_STATES = (*DUE_STATES, RechargeState.CHARGING, RechargeState.PAID)
FINISHED_STATES = (
    RechargeState.SUCCEEDED,
    RechargeState.FAILED,
    RechargeState.SKIPPED,
    RechargeState.NEEDS_ATTENTION,
)
# What the user is told for each way a recharge fails (Stripe's own codes, and ours).
FAILURE_REASONS = {
    "card_declined": "Your card was declined.",
    "expired_card": "Your card has expired.",
    "authentication_required": "Your bank asked you to authenticate the payment, which an "
    "automatic recharge cannot do.",
    "no_saved_card": "There is no card saved on your account.",
    "pack_unavailable": "The credit pack you chose is no longer on sale.",
    # Skipped, not failed: auto-recharge stays on.
    "daily_cap_reached": "{cap} recharge(s) in the last 24 hours already (your daily cap).",
    "recharge_in_progress": "A recharge was still on its way.",
}


def pack_on_sale(key: str) -> CatalogueItem | None:
    """The credit pack sold under `key` now (what a recharge buys), or None."""
    return selectors.item_on_sale(kind=CatalogueKind.PACK, key=key)


def _stripe_customer(user: User) -> str:
    """The user's Stripe customer id ("" when they never went to Checkout)."""
    return str(Customer.objects.filter(subscriber=user).values_list("id", flat=True).first() or "")


# --- The rule


def recharge_rule_set(
    *, user: User, enabled: bool, threshold: int, pack: str, daily_cap: int
) -> AutoRecharge:
    """Keep the user's auto-recharge rule, and the watch of their balance against its threshold
    (alerts). Turning it on (or keeping it on) checks with Stripe that a card is saved (409
    `no_saved_card` otherwise) and clears the last failure. Turned on (or its threshold moved)
    while the balance is already below the threshold, the first pack is bought at once."""
    most, cap = AutoRecharge.MAX_THRESHOLD, AutoRecharge.MAX_DAILY_CAP
    if not 0 < threshold <= most:
        raise BadRequest(f"threshold must be between 1 and {most} credits.", code="invalid_request")
    if not 0 < daily_cap <= cap:
        raise BadRequest(f"daily_cap must be between 1 and {cap}.", code="invalid_request")
    if pack_on_sale(pack) is None:
        raise BadRequest(f"Unknown package {pack!r}.", code="unknown_package")
    card: stripe_client.SavedCard | None = None
    if enabled:
        customer = _stripe_customer(user)
        card = stripe_client.customer_card(customer) if customer else None
        if card is None:
            raise Conflict(
                "Auto-recharge charges the card saved at your last Checkout: buy a credit pack "
                "once, then turn it on.",
                code="no_saved_card",
            )
    fields: dict[str, Any] = {
        "enabled": enabled,
        "threshold": threshold,
        "pack": pack,
        "daily_cap": daily_cap,
    }
    if card is not None:
        fields.update(
            card_brand=card.brand,
            card_last4=card.last4,
            failure_code="",
            failure_message="",
            failed_at=None,
        )
    before = AutoRecharge.objects.filter(user=user).first()
    rule, _ = AutoRecharge.objects.update_or_create(user=user, defaults=fields)
    logger.info({"event": "auto_recharge_set", "user": user.pk, "enabled": enabled, "pack": pack})
    if not enabled:
        alerts.watch_set(user=user, purpose=WatchPurpose.RECHARGE, threshold=None)
    elif before is None or not before.enabled or before.threshold != threshold:
        # Only a new watch may cross at once: the same rule saved again (a new pack or cap)
        # never buys a second pack for a fall already handled.
        alerts.watch_set(
            user=user, purpose=WatchPurpose.RECHARGE, threshold=threshold, cross_if_below=True
        )
    return rule


def recharge_rule_turn_off(*, user_id: int) -> bool:
    """Turn the user's auto-recharge off (staff, from the admin); what it was is kept. Returns
    False when it was not on."""
    with transaction.atomic():
        turned = AutoRecharge.objects.filter(user_id=user_id, enabled=True).update(enabled=False)
        _watch_stop(user_id)
    return bool(turned)


def _watch_stop(user_id: int) -> None:
    """Stop watching the balance for auto-recharge (it is off)."""
    LowBalanceAlert.objects.filter(user_id=user_id, purpose=WatchPurpose.RECHARGE).delete()


def recharge_on_crossing(*, sender: Any, crossing: LowBalanceCrossing, **kwargs: Any) -> None:
    """`alerts.signals.balance_crossed`: the balance fell below the auto-recharge's threshold;
    the recharge is recorded in the crossing's transaction, keyed by it."""
    if crossing.purpose == WatchPurpose.RECHARGE:
        recharge_record(
            user_id=crossing.user_id, balance=crossing.balance, cause_key=f"crossing:{crossing.pk}"
        )


# --- A fall below the threshold


def recharge_record(*, user_id: int, balance: int, cause_key: str) -> Recharge | None:
    """Record the recharge a fall below the threshold calls for, in the caller's transaction
    (that of the crossing), once per `cause_key`. Past the daily cap it is recorded as skipped.
    Returns the recharge, or None when the user has no auto-recharge on or the balance is not
    below its threshold. The worker charges it once the transaction commits."""
    with transaction.atomic():
        # Locked: two falls recorded at once count the daily cap one after the other.
        rule = AutoRecharge.objects.select_for_update().filter(user_id=user_id).first()
        if rule is None or not rule.enabled or balance >= rule.threshold:
            return None
        pack = pack_on_sale(rule.pack)
        skip = ""
        if Recharge.objects.filter(user_id=user_id, state__in=IN_FLIGHT_STATES).exists():
            skip = "recharge_in_progress"  # one at a time: its credits are on their way
        elif selectors.recharges_in_last_day(user_id=user_id) >= rule.daily_cap:
            skip = "daily_cap_reached"
        skipped = bool(skip)
        recharge, created = Recharge.objects.get_or_create(
            key=cause_key,
            defaults={
                "user_id": user_id,
                "pack": rule.pack,
                # What the catalogue sells the pack at now is what is charged and granted.
                "credits": pack.credits if pack else 0,
                "stripe_price_id": pack.stripe_price_id if pack else "",
                "amount_cents": pack.unit_amount if pack else None,
                "currency": pack.currency if pack else "",
                "threshold": rule.threshold,
                "balance": balance,
                "state": RechargeState.SKIPPED if skipped else RechargeState.PENDING,
                "failure_code": skip,
                "failure_message": FAILURE_REASONS.get(skip, "").format(cap=rule.daily_cap),
                "finished_at": timezone.now() if skipped else None,
            },
        )
    if created:
        logger.info(
            {
                "event": "recharge_recorded",
                "recharge": recharge.key,
                "user": user_id,
                "state": recharge.state,
            }
        )
        if not skipped:
            transaction.on_commit(worker_nudge)
    return recharge


# --- Charging (the worker)


def _due_q(now: datetime) -> Q:
    stale = now - timedelta(seconds=settings.GRANT_SENDING_LEASE_SECONDS)
    return Q(state__in=DUE_STATES, next_attempt_at__lte=now) | Q(
        state=RechargeState.CHARGING, claimed_at__lt=stale
    )


def _claim(recharge_id: int) -> Recharge | None:
    """Take the recharge for this worker (`outbox_claim`), or None when it is not due or another
    worker has it."""
    now = timezone.now()
    claimed = outbox_claim(
        Recharge.objects.filter(_due_q(now), pk=recharge_id),
        state=RechargeState.CHARGING,
        claimed_at=now,
        attempts=F("attempts") + 1,
    )
    return Recharge.objects.get(pk=recharge_id) if claimed else None


def _held(recharge: Recharge) -> Any:
    """The recharge's row while this worker still holds its claim (a webhook may have settled it
    meanwhile; past the lease another worker may have taken it)."""
    return Recharge.objects.filter(
        pk=recharge.pk, state=RechargeState.CHARGING, claimed_at=recharge.claimed_at
    )


class _ClaimLost(Exception):
    """Another worker took the recharge over (past the lease) while this one was preparing."""


def _prepare(recharge: Recharge) -> str:
    """Store the customer and card the PaymentIntent is created with on the row (the price was
    stored when it was recorded), once, before the first call; later attempts send exactly the
    same. Returns a failure code when it cannot be charged at all, else ""."""
    if not recharge.stripe_price_id or not recharge.amount_cents or not recharge.credits:
        return "pack_unavailable"  # the pack was off sale when the balance fell
    if recharge.payment_method:
        return ""
    customer = _stripe_customer(recharge.user)
    card = stripe_client.customer_card(customer) if customer else None
    if card is None:
        return "no_saved_card"
    fields = {"stripe_customer": customer, "payment_method": card.payment_method}
    if not _held(recharge).update(**fields):
        raise _ClaimLost
    for name, value in fields.items():
        setattr(recharge, name, value)
    AutoRecharge.objects.filter(user_id=recharge.user_id).update(
        card_brand=card.brand, card_last4=card.last4
    )
    return ""


def recharge_charge(recharge_id: int) -> Recharge | None:
    """Charge one recharge if it is due and nobody else is charging it; safe to call any time,
    from any number of processes. Returns the recharge as left, or None when not claimed."""
    recharge = _claim(recharge_id)
    if recharge is None:
        return None
    try:
        failure = _prepare(recharge)
        if failure:
            recharge_failed(recharge_id=recharge.pk, code=failure)
            return Recharge.objects.get(pk=recharge.pk)
        item = selectors.catalogue_item(recharge.stripe_price_id)
        outcome = stripe_client.payment_off_session(
            customer_id=recharge.stripe_customer,
            payment_method=recharge.payment_method,
            amount=int(recharge.amount_cents or 0),
            currency=recharge.currency,
            description=f"TIMEPOINT auto-recharge: {item.name if item else recharge.pack}",
            metadata={
                "tp_recharge": str(recharge.public_id),
                "user_id": str(recharge.user_id),
                "package": recharge.pack,
            },
            idempotency_key=recharge.idempotency_key,
        )
    except ApiError as exc:
        return _retry_later(recharge, exc.detail_text)
    except _ClaimLost:
        return Recharge.objects.get(pk=recharge.pk)
    if outcome.status == "failed" or outcome.status == "requires_action":
        code = outcome.code if outcome.status == "failed" else "authentication_required"
        recharge_failed(
            recharge_id=recharge.pk,
            code=code,
            message=outcome.message,
            payment_intent=outcome.payment_intent,
        )
    else:  # succeeded (processing: a slower method) — the webhook brings the credits
        _held(recharge).update(
            state=RechargeState.PAID,
            stripe_payment_intent=outcome.payment_intent,
            claimed_at=None,
            last_error="",
        )
        logger.info(
            {"event": "recharge_paid", "recharge": recharge.key, "intent": outcome.payment_intent}
        )
    return Recharge.objects.get(pk=recharge.pk)


def _retry_later(recharge: Recharge, error: str) -> Recharge:
    """Stripe gave no usable answer: the charge may or may not exist. Ask again later with the
    same key (Stripe answers a repeat with the first result); past the retry window, staff."""
    window = timedelta(seconds=settings.RECHARGE_RETRY_WINDOW_SECONDS)
    if timezone.now() - recharge.created_at >= window:
        _held(recharge).update(
            state=RechargeState.NEEDS_ATTENTION,
            last_error=error[:2000],
            claimed_at=None,
            finished_at=timezone.now(),
        )
        logger.error({"event": "recharge_gave_up", "recharge": recharge.key, "error": error})
    else:
        delay = backoff_seconds(recharge.attempts)
        _held(recharge).update(
            state=RechargeState.RETRYING,
            last_error=error[:2000],
            claimed_at=None,
            next_attempt_at=timezone.now() + timedelta(seconds=delay),
        )
        logger.warning(
            {"event": "recharge_retry", "recharge": recharge.key, "error": error, "in": delay}
        )
    return Recharge.objects.get(pk=recharge.pk)


def recharges_charge_due(*, limit: int = 50) -> int:
    """Charge every recharge that is due. Returns how many this call claimed."""
    ids = list(
        Recharge.objects.filter(_due_q(timezone.now()))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for recharge_id in ids if recharge_charge(recharge_id) is not None)


# --- Outcomes (the worker's answer, or Stripe's webhooks)


def recharge_for_intent(*, public_id: str) -> Recharge | None:
    """The recharge a PaymentIntent's `tp_recharge` metadata names, locked (the caller's
    transaction), or None."""
    try:
        return Recharge.objects.select_for_update().filter(public_id=public_id).first()
    except (ValueError, TypeError):  # not a UUID: not ours
        return None


def recharge_succeeded(*, recharge: Recharge, payment_intent: str, grant: CreditGrant) -> None:
    """Stripe says the payment succeeded and its grant is recorded (in the caller's transaction,
    with `recharge` locked). A recharge already failed still gets its credits: the money was
    taken."""
    if recharge.state == RechargeState.FAILED:
        logger.error({"event": "recharge_paid_after_failure", "recharge": recharge.key})
    Recharge.objects.filter(pk=recharge.pk).update(
        state=RechargeState.SUCCEEDED,
        stripe_payment_intent=payment_intent,
        grant=grant,
        claimed_at=None,
        finished_at=timezone.now(),
    )


@transaction.atomic
def recharge_failed(
    *, recharge_id: int, code: str, message: str = "", payment_intent: str = ""
) -> bool:
    """The recharge cannot be paid (declined, authentication required, no card): once, however
    many of the answer and Stripe's webhooks say so, turn auto-recharge off (and stop watching
    the balance for it), emit `credits.recharge_failed` and queue the email. Returns True when
    this call failed it."""
    reason = FAILURE_REASONS.get(code) or message or "The payment failed."
    failed = Recharge.objects.filter(pk=recharge_id).exclude(state__in=FINISHED_STATES)
    updated = failed.update(
        state=RechargeState.FAILED,
        failure_code=code[:64],
        failure_message=reason[:255],
        stripe_payment_intent=payment_intent,
        claimed_at=None,
        finished_at=timezone.now(),
    )
    if not updated:
        return False
    recharge = Recharge.objects.select_related("user").get(pk=recharge_id)
    AutoRecharge.objects.filter(user_id=recharge.user_id).update(
        enabled=False,
        failure_code=code[:64],
        failure_message=reason[:255],
        failed_at=timezone.now(),
    )
    _watch_stop(recharge.user_id)
    if recharge.user.email:
        Recharge.objects.filter(pk=recharge_id).update(
            email_to=recharge.user.email,
            email_state=EmailState.PENDING,
            email_next_attempt_at=timezone.now(),
        )
    webhooks.event_emit(
        user_id=recharge.user_id,
        type=EventType.CREDITS_RECHARGE_FAILED,
        data={"pack": recharge.pack, "code": code, "reason": reason},
        dedupe_key=f"credits.recharge_failed:{recharge.key}",
    )
    logger.warning(
        {
            "event": "recharge_failed",
            "recharge": recharge.key,
            "code": code,
            "user": recharge.user_id,
        }
    )
    return True


# --- The failure email


def _failure_email(recharge: Recharge) -> EmailMessage:
    item = selectors.catalogue_item(recharge.stripe_price_id)
    rule = AutoRecharge.objects.filter(user_id=recharge.user_id).first()
    context = {
        "recharge": recharge,
        "pack_name": item.name if item else recharge.pack,
        "card": f"{rule.card_brand} card ending {rule.card_last4}"
        if rule and rule.card_last4
        else "",
        "billing_url": alerts.portal_url("billing/"),
    }
    return EmailMessage(
        subject=render_to_string("payments/recharge_failed_subject.txt", context).strip(),
        body=render_to_string("payments/recharge_failed_email.txt", context),
    )


def recharge_emails_send_due(*, limit: int = 20) -> int:
    """Send the email of every failed recharge that is due. Returns how many were sent."""
    return alerts.emails_send_due(model=Recharge, compose=_failure_email, limit=limit)
