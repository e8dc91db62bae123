"""Everything in payments that changes state: checkout, Stripe and Apple events, plan changes and
the exactly-once credit-grant outbox.

Exactly once, against a Flash whose grant endpoint is not idempotent (upstreams.md pitfall 12):
1. A `CreditGrant` with a unique key is committed in the same transaction as its cause (a Stripe
   event, an Apple transaction, a staff action). A duplicate cause finds the existing row.
2. A worker claims the row (pending → sending) so only one process sends it, and sends it with the
   key in Flash's ledger description.
3. When a send's outcome is unknown (timeout, dropped connection, 5xx, crash while sending), the
   next attempt first reads the user's Flash ledger for the key and never resends if it is there.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Case, F, Q, When
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import Plan, Tier, User
from payments import catalogue, stripe_client, stripe_shapes
from payments.apple_tokens import apple_token_check
from payments.models import (
    AppleNotification,
    CreditGrant,
    EventState,
    GrantSource,
    GrantState,
    Payment,
    PaymentProvider,
    StripeWebhookEvent,
)
from relay import flash
from timepoint_billing.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
)
from timepoint_billing.metrics import WEBHOOK_LAG

logger = logging.getLogger("timepoint.payments")

LIVE_SUBSCRIPTION_STATUSES = frozenset({"active", "trialing", "past_due"})
SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
PLAN_EVENTS = SUBSCRIPTION_EVENTS | {"checkout.session.completed", "invoice.paid"}
HISTORY_PAGE = 100


# --- Pitfall 11: never grant while the user's sync generation is in flight


def flash_user_busy_key(flash_user_id: str) -> str:
    """Cache key the relay sets while a credit-changing generation for this Flash user runs.

    Contract: the relay sets it (any truthy value, with a timeout ≥ its generation timeout) before
    calling Flash and deletes it when the call ends. The grant worker waits while it is set."""
    return f"flash:busy:{flash_user_id}"


def flash_user_granting_key(flash_user_id: str) -> str:
    """Cache key the grant worker holds while it changes this Flash user's credits.

    Together with the busy counter this is a two-sided lock, sound because the cache orders
    every operation (Redis; one process's memory without it): the worker *sets* its marker, then
    reads the busy counter; the relay *raises* the busy counter, then reads the marker. Whichever
    went second sees the other and backs off, so a grant never runs while a generation is in
    flight, nor a generation starts while a grant is under way. A cache that does not answer
    counts as busy: the grant waits (it is in the outbox), it is never sent blind."""
    return f"flash:granting:{flash_user_id}"


def grant_marker_seconds() -> int:
    """As long as one grant call can take (a worker killed mid-call frees the user after it),
    and never longer than a sending claim is trusted: once the claim counts as abandoned, the
    next worker may take the grant over, and must be able to take the user's credits too."""
    call = math.ceil(settings.UPSTREAM_CONNECT_TIMEOUT + settings.UPSTREAM_READ_TIMEOUT) + 2
    return max(1, min(call, int(settings.GRANT_SENDING_LEASE_SECONDS)))


def user_credits_take_for_grant(flash_user_id: str) -> str | None:
    """Hold the user's credits for a grant, waiting (bounded) for in-flight generations to end.
    Returns the holder's token, or None when the user stayed busy (try again later)."""
    deadline = time.monotonic() + settings.GRANT_BUSY_WAIT_SECONDS
    key = flash_user_granting_key(flash_user_id)
    token = uuid.uuid4().hex
    while True:
        if cache.add(key, token, grant_marker_seconds()):
            if not cache.get(flash_user_busy_key(flash_user_id)):
                return token
            user_credits_give_back(flash_user_id, token)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def user_credits_give_back(flash_user_id: str, token: str) -> None:
    key = flash_user_granting_key(flash_user_id)
    if cache.get(key) == token:  # never another worker's marker (ours may have expired)
        cache.delete(key)


# --- The grant outbox


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
    """Take the grant for this worker, or None when it is not due or another worker has it.

    PostgreSQL: `FOR UPDATE SKIP LOCKED` lets parallel workers pass each other by. Everywhere:
    the UPDATE is conditional on the row still being due, so exactly one claimer wins."""
    now = timezone.now()
    with transaction.atomic():
        rows = CreditGrant.objects.filter(_due_q(now), pk=grant_id)
        if connection.features.has_select_for_update_skip_locked:
            if rows.select_for_update(skip_locked=True).first() is None:
                return None
        claimed = rows.update(
            # A row still "sending" past its lease was abandoned mid-send: outcome unknown.
            outcome_unknown=Case(
                When(state=GrantState.SENDING, then=True), default=F("outcome_unknown")
            ),
            state=GrantState.SENDING,
            claimed_at=now,
            attempts=F("attempts") + 1,
        )
    if not claimed:
        return None
    return CreditGrant.objects.get(pk=grant_id)


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


def _backoff_seconds(attempts: int) -> float:
    base = settings.GRANT_RETRY_BASE_SECONDS * (2 ** max(0, attempts - 1))
    return float(min(settings.GRANT_RETRY_MAX_SECONDS, base))


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
    delay = _backoff_seconds(grant.attempts)
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
    return _grant_save(
        grant,
        state=GrantState.SENT,
        sent_at=timezone.now(),
        flash_balance_after=balance if isinstance(balance, int) else None,
        outcome_unknown=False,
        last_error=note,
        claimed_at=None,
    )


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


# --- Waking the worker: the web process records work and nudges, the worker delivers

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


# --- Plans


def user_plan_set(*, user: User, plan: str) -> User:
    """Move the user's plan; HD access follows it and the user's API keys get the plan's tier."""
    offer = catalogue.PLANS[plan]
    fields: dict[str, Any] = {"plan": offer.name}
    if user.tier != Tier.ENTERPRISE:  # staff-set enterprise is never changed by billing
        fields["tier"] = offer.key_tier
    changed = any(getattr(user, name) != value for name, value in fields.items())
    for name, value in fields.items():
        setattr(user, name, value)
    if changed:
        User.objects.filter(pk=user.pk).update(**fields)
        logger.info({"event": "plan_changed", "user": user.pk, "plan": offer.name})
    try:
        from apikeys.services import keys_set_tier_for_user
    except ImportError:  # pragma: no cover - apikeys ships it; guard for partial deploys
        logger.error("apikeys.services.keys_set_tier_for_user is missing; key tiers not moved")
    else:
        keys_set_tier_for_user(user=user)
    return user


def _subscription_plan(subscription: dict[str, Any]) -> str:
    """The plan a live subscription gives, from its price (or our metadata when unpriced)."""
    best = Plan.FREE
    items = (subscription.get("items") or {}).get("data") or []
    for item in items:
        price = item.get("price") or item.get("plan") or {}
        price_id = price.get("id") if isinstance(price, dict) else str(price)
        offer = catalogue.plan_for_price(str(price_id or ""))
        if offer and catalogue.PLAN_RANK[offer.name] > catalogue.PLAN_RANK[best]:
            best = Plan(offer.name)
    if best == Plan.FREE:
        meta_plan = (subscription.get("metadata") or {}).get("plan", "")
        if meta_plan in catalogue.PLANS:
            best = Plan(meta_plan)
    return best


def plan_sync_for_customer(*, customer_id: str) -> User | None:
    """Set the customer's user to the best plan among its live mirrored subscriptions (free when
    none). A cancellation at period end keeps the plan until Stripe ends the subscription."""
    from djstripe.models import Customer

    customer = Customer.objects.filter(id=customer_id).select_related("subscriber").first()
    user = customer.subscriber if customer is not None else None
    if user is None:
        return None
    best = Plan.FREE
    for subscription in stripe_client.subscriptions_for_customer(customer_id):
        if subscription.get("status") not in LIVE_SUBSCRIPTION_STATUSES:
            continue
        plan = _subscription_plan(subscription)
        if catalogue.PLAN_RANK[plan] > catalogue.PLAN_RANK[best]:
            best = Plan(plan)
    return user_plan_set(user=user, plan=best)


# --- Checkout and the billing portal


def checkout_create(*, user: User, package: str = "", plan: str = "") -> dict[str, str]:
    """A Stripe Checkout session for a credit pack (payment) or a plan (subscription)."""
    if bool(package) == bool(plan):
        raise BadRequest("Send either `package` or `plan`.", code="invalid_request")
    if package:
        pack = catalogue.PACKS.get(package)
        if pack is None:
            raise BadRequest(f"Unknown package {package!r}.", code="unknown_package")
        price_id, mode = pack.stripe_price_id, "payment"
        metadata = {"user_id": str(user.pk), "package": pack.name}
    else:
        offer = catalogue.PLANS.get(plan)
        if offer is None or offer.name == Plan.FREE:
            raise BadRequest(f"Unknown plan {plan!r}.", code="unknown_plan")
        if user.plan != Plan.FREE:
            raise Conflict(
                "You already have a plan; change or cancel it in the billing portal.",
                code="already_subscribed",
            )
        price_id, mode = offer.stripe_price_id, "subscription"
        metadata = {"user_id": str(user.pk), "plan": offer.name}
    if not price_id:
        raise ServiceUnavailable(
            "This item is not on sale right now.", code="price_not_configured", retry_after=3600
        )
    customer_id = stripe_client.customer_for_user(user)
    return stripe_client.checkout_session_create(
        customer_id=customer_id,
        mode=mode,
        price_id=price_id,
        metadata=metadata,
        client_reference=str(user.pk),
    )


def billing_portal_create(*, user: User) -> str:
    from djstripe.models import Customer

    customer = Customer.objects.filter(subscriber=user).first()
    if customer is None:
        raise NotFound("You have no billing account yet.", code="no_billing_account")
    return stripe_client.billing_portal_session_create(customer_id=str(customer.id))


# --- Stripe webhooks


def _id(value: Any) -> str:
    """A Stripe id from an expandable field (a bare id or an object with an id)."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


def _stripe_user(customer_id: str, metadata: dict[str, Any] | None) -> User | None:
    """The user a Stripe object belongs to: the dj-stripe customer's subscriber, else our
    `user_id` metadata (set by checkout_create, so it arrives signed)."""
    from djstripe.models import Customer

    if customer_id:
        customer = Customer.objects.filter(id=customer_id).select_related("subscriber").first()
        if customer is not None and customer.subscriber is not None:
            return customer.subscriber
    user_id = str((metadata or {}).get("user_id") or "")
    if user_id.isdigit():
        return User.objects.filter(pk=int(user_id)).first()
    return None


class _NeedsAttention(Exception):
    """The event is stored but the gateway cannot act on it alone; staff must look."""


def _payment_record(*, reference: str, user: User | None, **fields: Any) -> Payment:
    payment, created = Payment.objects.get_or_create(
        reference=reference,
        defaults={"provider": PaymentProvider.STRIPE, "user": user, **fields},
    )
    if not created:
        # An earlier refund/dispute event may have created a bare record: fill it in.
        missing = {k: v for k, v in fields.items() if v and not getattr(payment, k)}
        if user is not None and payment.user_id is None:
            missing["user"] = user
        if missing:
            for name, value in missing.items():
                setattr(payment, name, value)
            payment.save(update_fields=[*missing, "updated_at"])
    return payment


def _record_checkout(event: StripeWebhookEvent, session: dict[str, Any]) -> None:
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        return  # an async payment: checkout.session.async_payment_succeeded will follow
    metadata = session.get("metadata") or {}
    user = _stripe_user(_id(session.get("customer")), metadata)
    if user is None:
        raise _NeedsAttention("No user for this checkout session.")
    if session.get("mode") == "subscription":
        invoice_id = _id(session.get("invoice"))
        offer = catalogue.PLANS.get(str(metadata.get("plan") or ""))
        if not invoice_id or offer is None:
            return  # invoice.paid grants it
        _subscription_grant(event, user, offer, invoice_id, session)
        return
    pack = catalogue.PACKS.get(str(metadata.get("package") or ""))
    if pack is None:
        raise _NeedsAttention("The checkout session names no known credit pack.")
    payment_id = _id(session.get("payment_intent")) or str(session["id"])
    key = f"stripe:{payment_id}"
    grant, _ = grant_create(
        key=key,
        user=user,
        amount=pack.credits,
        transaction_type="stripe_purchase",
        label=pack.label,
        source=GrantSource.STRIPE,
        stripe_event_id=event.stripe_id,
    )
    _payment_record(
        reference=key,
        user=user,
        product=pack.name,
        amount_cents=int(session.get("amount_total") or 0),
        currency=str(session.get("currency") or ""),
        stripe_payment_intent=_id(session.get("payment_intent")),
        grant=grant,
    )


def _subscription_grant(
    event: StripeWebhookEvent,
    user: User,
    offer: catalogue.PlanOffer,
    invoice_id: str,
    source: dict[str, Any],
) -> None:
    key = f"stripe:{invoice_id}"
    payment_intent, charge = stripe_shapes.invoice_payment_refs(source)
    grant, _ = grant_create(
        key=key,
        user=user,
        amount=offer.monthly_credits,
        transaction_type="subscription_grant",
        label=offer.label,
        source=GrantSource.STRIPE,
        stripe_event_id=event.stripe_id,
    )
    _payment_record(
        reference=key,
        user=user,
        product=offer.name,
        amount_cents=int(source.get("amount_paid") or source.get("amount_total") or 0),
        currency=str(source.get("currency") or ""),
        stripe_invoice=invoice_id,
        stripe_payment_intent=payment_intent,
        stripe_charge=charge,
        grant=grant,
    )


def _record_invoice_paid(event: StripeWebhookEvent, invoice: dict[str, Any]) -> None:
    subscription_id, metadata = stripe_shapes.invoice_subscription(invoice)
    if not subscription_id:
        return  # not a subscription invoice: nothing to grant
    if invoice.get("billing_reason") not in (None, "subscription_create", "subscription_cycle"):
        return  # prorations and manual invoices grant nothing; dj-stripe mirrors them
    user = _stripe_user(_id(invoice.get("customer")), metadata)
    # What Stripe billed, never metadata.plan: a portal plan change leaves that on the old plan.
    offer = stripe_shapes.invoice_plan_billed(invoice)
    if user is None or offer is None or offer.monthly_credits <= 0:
        raise _NeedsAttention("Paid subscription invoice with no known user or plan.")
    _subscription_grant(event, user, offer, str(invoice["id"]), invoice)


def _payment_for_refs(refs: stripe_shapes.ChargeRefs) -> Payment | None:
    lookups = [
        ("stripe_charge", refs.charge),
        ("stripe_payment_intent", refs.payment_intent),
        ("stripe_invoice", refs.invoice),
    ]
    for field, value in lookups:
        if value:
            found = Payment.objects.filter(**{field: value}).first()
            if found is not None:
                return found
    return None


def _payment_for_adjustment(obj: dict[str, Any]) -> Payment:
    """The one payment record of the purchase a charge, refund or dispute belongs to (a pack, a
    subscription's first invoice or a renewal), locked; made (keyed as the purchase's own record
    will be) when the purchase's event has not arrived yet, so that event fills it in.

    Stripe is asked only for what the event and our records leave open: the charge (a dispute's
    customer) and the InvoicePayment that links a payment intent to its invoice."""
    refs = stripe_shapes.charge_refs(obj)
    payment = _payment_for_refs(refs)
    if payment is None or payment.user_id is None:
        if not refs.customer or not refs.payment_intent:
            refs = stripe_shapes.charge_refs_fetched(refs)
        if payment is None:
            refs = replace(refs, invoice=stripe_shapes.charge_invoice(refs))
            payment = _payment_for_refs(refs)
    if payment is None:
        payment = _payment_record(
            reference=f"stripe:{refs.invoice or refs.payment_intent or refs.charge}",
            user=_stripe_user(refs.customer, refs.metadata),
            stripe_payment_intent=refs.payment_intent,
            stripe_invoice=refs.invoice,
            amount_cents=refs.amount,
            currency=refs.currency,
        )
    payment = Payment.objects.select_for_update().get(pk=payment.pk)
    found = {
        "stripe_charge": refs.charge,
        "stripe_payment_intent": refs.payment_intent,
        "stripe_invoice": refs.invoice,
    }
    missing: dict[str, Any] = {k: v for k, v in found.items() if v and not getattr(payment, k)}
    if payment.user_id is None:
        user = _stripe_user(refs.customer, refs.metadata)
        if user is not None:
            missing["user"] = user
    if missing:
        for name, value in missing.items():
            setattr(payment, name, value)
        payment.save(update_fields=[*missing, "updated_at"])
    return payment


def _record_refund(charge: dict[str, Any]) -> None:
    payment = _payment_for_adjustment(charge)
    # `amount_refunded` is cumulative on the charge; events may arrive out of order.
    refunded = max(payment.amount_refunded_cents, int(charge.get("amount_refunded") or 0))
    payment.amount_refunded_cents = refunded
    payment.refunded_at = timezone.now()
    payment.needs_review = True  # credits are never taken back silently: staff decide
    payment.save(
        update_fields=["amount_refunded_cents", "refunded_at", "needs_review", "updated_at"]
    )
    logger.warning({"event": "payment_refunded", "payment": payment.reference, "cents": refunded})


def _record_dispute(dispute: dict[str, Any]) -> None:
    payment = _payment_for_adjustment(dispute)
    payment.disputed = True
    payment.dispute_reason = str(dispute.get("reason") or "")[:128]
    payment.needs_review = True
    payment.save(update_fields=["disputed", "dispute_reason", "needs_review", "updated_at"])
    logger.warning({"event": "payment_disputed", "payment": payment.reference})


_RECORDERS: dict[str, Callable[[StripeWebhookEvent, dict[str, Any]], None]] = {
    "checkout.session.completed": _record_checkout,
    "checkout.session.async_payment_succeeded": _record_checkout,
    "invoice.paid": _record_invoice_paid,
    "charge.refunded": lambda event, obj: _record_refund(obj),
    "charge.dispute.created": lambda event, obj: _record_dispute(obj),
}
# What the webhook endpoint must send: what is recorded, and what moves plans.
STRIPE_WEBHOOK_EVENTS = sorted({*_RECORDERS, *SUBSCRIPTION_EVENTS})


def _parse_stripe_event(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The event body is not JSON.", code="malformed_event")
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("id"), str)
        and data["id"].startswith("evt_")
        and isinstance(data.get("type"), str)
        and isinstance(data.get("data"), dict)
        and isinstance(data["data"].get("object"), dict)
    )
    if not ok:
        raise BadRequest("The body is not a Stripe event.", code="malformed_event")
    return dict(data)


def stripe_webhook_receive(*, payload: bytes, signature_header: str) -> tuple[int, bool]:
    """Verify, store once, and record what the event means, in one transaction.

    Returns (stored event id, created). The mirror and plan work is the worker's, nudged after
    the commit."""
    if not stripe_client.webhook_verify(payload=payload, signature_header=signature_header):
        raise BadRequest("Invalid Stripe signature.", code="invalid_signature")
    data = _parse_stripe_event(payload)
    with transaction.atomic():
        event, created = StripeWebhookEvent.objects.get_or_create(
            stripe_id=data["id"],
            defaults={
                "type": data["type"],
                "livemode": bool(data.get("livemode")),
                "payload": data,
            },
        )
        if not created:
            return event.pk, False
        if isinstance(data.get("created"), int | float):
            WEBHOOK_LAG.labels("stripe", "received").observe(
                max(0.0, time.time() - float(data["created"]))
            )
        if not _stripe_event_record(event):
            return event.pk, True
        transaction.on_commit(worker_nudge)
    return event.pk, True


def _stripe_event_record(event: StripeWebhookEvent) -> bool:
    """Record what a stored event means (grants, payments, refunds) in a savepoint of the caller's
    transaction. Every recorder is idempotent by its grant/payment key, so running it again (a
    staff retry) finds what an earlier run made. An event the gateway cannot act on alone is kept
    as needs-attention; returns False then."""
    recorder = _RECORDERS.get(event.type)
    if recorder is None:
        return True
    try:
        with transaction.atomic():
            recorder(event, event.payload["data"]["object"])
    except (_NeedsAttention, KeyError, TypeError, ValueError) as exc:
        logger.error({"event": "stripe_event_unusable", "id": event.stripe_id})
        event.state = EventState.NEEDS_ATTENTION
        event.last_error = str(exc)[:1000] or type(exc).__name__
        event.save(update_fields=["state", "last_error"])
        return False
    return True


def stripe_event_process(event_id: int) -> bool:
    """The work after the commit: dj-stripe mirrors the event (it re-fetches objects from the
    Stripe API) and plans follow the mirrored subscriptions. A failure keeps the event for a
    later retry; nothing is lost. Returns True when processed now."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.GRANT_SENDING_LEASE_SECONDS)
    claimed = StripeWebhookEvent.objects.filter(
        pk=event_id, state=EventState.RECEIVED, next_attempt_at__lte=now
    ).update(next_attempt_at=lease, attempts=F("attempts") + 1)
    if not claimed:
        return False
    event = StripeWebhookEvent.objects.get(pk=event_id)
    try:
        stripe_client.event_mirror(event.payload)
        if event.type in PLAN_EVENTS:
            customer_id = _id(event.payload["data"]["object"].get("customer"))
            if customer_id:
                plan_sync_for_customer(customer_id=customer_id)
    except Exception as exc:
        give_up = event.attempts >= settings.GRANT_MAX_ATTEMPTS
        StripeWebhookEvent.objects.filter(pk=event_id).update(
            state=EventState.NEEDS_ATTENTION if give_up else EventState.RECEIVED,
            last_error=f"{type(exc).__name__}: {exc}"[:1000],
            next_attempt_at=timezone.now() + timedelta(seconds=_backoff_seconds(event.attempts)),
        )
        logger.warning({"event": "stripe_event_retry", "id": event.stripe_id, "error": str(exc)})
        return False
    processed_at = timezone.now()
    StripeWebhookEvent.objects.filter(pk=event_id).update(
        state=EventState.PROCESSED, processed_at=processed_at, last_error=""
    )
    WEBHOOK_LAG.labels("stripe", "processed").observe(
        max(0.0, (processed_at - event.received_at).total_seconds())
    )
    return True


def stripe_events_process_due(*, limit: int = 100) -> int:
    ids = list(
        StripeWebhookEvent.objects.filter(
            state=EventState.RECEIVED, next_attempt_at__lte=timezone.now()
        )
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for event_id in ids if stripe_event_process(event_id))


@transaction.atomic
def stripe_event_retry(*, event_id: int) -> bool:
    """Staff retry of a stored, unprocessed event: record what it means again (an event kept as
    needs-attention never made its grant; the user may be linked now), then queue the mirror/plan
    work. The event row is locked, so two retries at once record it once. Returns False when the
    event is already processed or still cannot be acted on."""
    event = (
        StripeWebhookEvent.objects.select_for_update()
        .filter(pk=event_id)
        .exclude(state=EventState.PROCESSED)
        .first()
    )
    if event is None or not _stripe_event_record(event):
        return False
    StripeWebhookEvent.objects.filter(pk=event.pk).update(
        state=EventState.RECEIVED, next_attempt_at=timezone.now(), attempts=0, last_error=""
    )
    transaction.on_commit(worker_nudge)
    return True


# --- Apple in-app purchases


def apple_verifier() -> Any:
    """Apple's SignedDataVerifier for our app. The Xcode and LocalTesting environments skip
    signature checks, so they are refused outright."""
    from appstoreserverlibrary.models.Environment import Environment
    from appstoreserverlibrary.signed_data_verifier import SignedDataVerifier

    # A configuration mistake: 503 for every caller until a deploy fixes it, never a 500.
    unconfigured = ServiceUnavailable(
        "In-app purchases are not configured.", code="apple_unconfigured", retry_after=3600
    )
    allowed = {"Production": Environment.PRODUCTION, "Sandbox": Environment.SANDBOX}
    environment = allowed.get(settings.APPLE_ENVIRONMENT)
    if environment is None:
        logger.error({"event": "apple_environment_refused", "env": settings.APPLE_ENVIRONMENT})
        raise unconfigured
    try:
        roots = [Path(path).read_bytes() for path in settings.APPLE_ROOT_CERT_PATHS]
    except OSError as exc:
        logger.error({"event": "apple_root_unreadable", "error": str(exc)})
        raise unconfigured from exc
    if not roots:
        raise unconfigured
    try:
        return SignedDataVerifier(
            roots,
            settings.APPLE_ENABLE_ONLINE_CHECKS,
            environment,
            settings.APPLE_BUNDLE_ID,
            settings.APPLE_APP_APPLE_ID or None,
        )
    except ValueError as exc:
        # Production without APPLE_APP_APPLE_ID, for one.
        logger.error({"event": "apple_verifier_refused", "error": str(exc)})
        raise unconfigured from exc


def _apple_decode(decode: Callable[[str], Any], signed: str) -> Any:
    from appstoreserverlibrary.signed_data_verifier import VerificationException

    try:
        return decode(signed)
    except VerificationException as exc:
        raise BadRequest(
            f"The signed data did not verify ({exc.status.name.lower()}).",
            code="invalid_apple_signature",
        )


def apple_transaction_verify(*, user: User, signed_transaction: str) -> CreditGrant:
    """Verify an App Store signed transaction and grant its product's credits once, to the
    account its `appAccountToken` names, or without one to the first user who presents it
    (another user → 409; `payments.apple_tokens`)."""
    verifier = apple_verifier()
    transaction_info = _apple_decode(
        verifier.verify_and_decode_signed_transaction, signed_transaction
    )
    transaction_id = str(transaction_info.transactionId or "")
    product_id = str(transaction_info.productId or "")
    if not transaction_id:
        raise BadRequest("The transaction has no id.", code="invalid_apple_transaction")
    if transaction_info.revocationDate:
        raise BadRequest("This purchase was refunded or revoked.", code="apple_revoked")
    apple_token_check(
        user=user,
        app_account_token=transaction_info.appAccountToken,
        transaction_id=transaction_id,
    )
    credits = settings.APPLE_PRODUCT_CREDITS.get(product_id)
    if not credits:
        raise BadRequest(f"Unknown product {product_id!r}.", code="unknown_product")
    key = f"apple:{transaction_id}"
    with transaction.atomic():
        payment, _ = Payment.objects.get_or_create(
            reference=key,
            defaults={
                "provider": PaymentProvider.APPLE,
                "user": user,
                "product": product_id,
                "amount_cents": int((transaction_info.price or 0) // 10),  # milliunits → cents
                "currency": str(transaction_info.currency or ""),
            },
        )
        if payment.user_id != user.pk:
            raise Conflict(
                "This purchase belongs to another account.", code="transaction_already_claimed"
            )
        grant, _ = grant_create(
            key=key,
            user=user,
            amount=credits,
            transaction_type="apple_iap",
            label=f"App Store {product_id}",
            source=GrantSource.APPLE,
        )
        if payment.grant_id is None:
            Payment.objects.filter(pk=payment.pk).update(grant=grant)
    return grant


def apple_notification_receive(*, signed_payload: str) -> bool:
    """Store an App Store Server Notification v2 once; refunds are recorded for staff.
    Returns True when it was new."""
    verifier = apple_verifier()
    notification = _apple_decode(verifier.verify_and_decode_notification, signed_payload)
    transaction_id = ""
    signed_info = getattr(notification.data, "signedTransactionInfo", None)
    if signed_info:
        info = _apple_decode(verifier.verify_and_decode_signed_transaction, signed_info)
        transaction_id = str(info.transactionId or "")
    kind = str(notification.rawNotificationType or notification.notificationType or "")
    with transaction.atomic():
        _, created = AppleNotification.objects.get_or_create(
            notification_uuid=str(notification.notificationUUID),
            defaults={
                "type": kind,
                "subtype": str(notification.rawSubtype or ""),
                "transaction_id": transaction_id,
                "payload": {"signedPayload": signed_payload},
            },
        )
        signed_ms = getattr(notification, "signedDate", None)
        if created and isinstance(signed_ms, int | float):
            WEBHOOK_LAG.labels("apple", "received").observe(
                max(0.0, time.time() - float(signed_ms) / 1000)
            )
        # REFUND: Apple refunded the buyer; REVOKE: Family Sharing access was taken back.
        if created and kind in ("REFUND", "REVOKE") and transaction_id:
            payment = Payment.objects.filter(reference=f"apple:{transaction_id}").first()
            if payment is not None:
                payment.amount_refunded_cents = payment.amount_cents
                payment.refunded_at = timezone.now()
                payment.needs_review = True
                payment.save(
                    update_fields=[
                        "amount_refunded_cents",
                        "refunded_at",
                        "needs_review",
                        "updated_at",
                    ]
                )
    return created


# --- Account lifecycle (accounts.signals receivers)


def on_user_deleted(sender: object, *, user: User, **kwargs: object) -> None:
    """Cancel the deleted user's live subscriptions at Stripe, inside the deletion's transaction:
    if Stripe cannot be reached the deletion rolls back (the client sees 502 and may retry), so an
    account is never gone while its subscription keeps billing."""
    from djstripe.models import Customer

    for customer in Customer.objects.filter(subscriber=user):
        for subscription in stripe_client.subscriptions_for_customer(str(customer.id)):
            if subscription.get("status") in LIVE_SUBSCRIPTION_STATUSES:
                stripe_client.subscription_cancel(str(subscription["id"]))
                logger.info(
                    {"event": "subscription_cancelled", "user": user.pk, "why": "account_deleted"}
                )
    user_plan_set(user=user, plan=Plan.FREE)
