"""Plans and subscriptions: what each subscriber bought (`PlanSubscription`, kept however the
catalogue changes later), what their invoices grant, and the plan each user holds (HD access and
key tiers follow it when it takes effect). The changes a subscriber asks for (the API, the
portal) are `payments.plan_changes`.

How a change reaches a subscriber:
- Upgrade: Stripe moves the subscription to the new price and invoices the rest of the period at
  once (`always_invoice`; a declined card changes nothing). The new plan applies as soon as
  Stripe says so; when the invoice is paid (`invoice.paid`, `subscription_update`) the difference
  in monthly credits for the rest of the period is granted once, keyed on the invoice:
  `round((new monthly credits - old) * the share of the new price Stripe billed for the period)`.
  The old credits are the subscriber's own (grandfathered) terms.
- Downgrade: Stripe bills the new price from the next period (`proration_behavior: none`); the
  change waits here (`PlanChange`, scheduled) and applies at the renewal, or once its period
  has ended, whichever the gateway learns first.
- A change made elsewhere (Stripe's billing portal) is recognised when its subscription or
  invoice event arrives, with the same rules.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from django.db import transaction
from django.utils import timezone
from djstripe.models import Customer

from accounts.models import Tier, User
from apikeys.services import keys_set_tier_for_user
from payments import selectors, stripe_client, stripe_shapes
from payments.catalogue import FREE_TERMS, PlanTerms
from payments.models import (
    PlanChange,
    PlanChangeKind,
    PlanChangeState,
    PlanSubscription,
)

logger = logging.getLogger("timepoint.payments")

LIVE_SUBSCRIPTION_STATUSES = frozenset({"active", "trialing", "past_due"})


class UnknownPlanPrice(Exception):
    """A subscription or invoice names a price the catalogue does not hold as a valid plan."""


def terms_of(row: PlanSubscription) -> PlanTerms:
    """The terms the subscriber has (grandfathered or not)."""
    return PlanTerms(
        plan=row.plan,
        price_id=row.stripe_price_id,
        monthly_credits=row.monthly_credits,
        hd_access=row.hd_access,
        key_tier=row.key_tier,
        unit_amount=row.unit_amount,
        currency=row.currency,
        name=selectors.plan_label(row.plan),
    )


def terms_set(row: PlanSubscription, terms: PlanTerms) -> None:
    row.plan = terms.plan
    row.stripe_price_id = terms.price_id
    row.monthly_credits = terms.monthly_credits
    row.hd_access = terms.hd_access
    row.key_tier = terms.key_tier
    row.unit_amount = terms.unit_amount
    row.currency = terms.currency
    row.terms_since = timezone.now()


def _price_terms(price_id: str) -> PlanTerms:
    terms = selectors.plan_terms_for_price(price_id)
    if terms is None:
        raise UnknownPlanPrice(f"The price {price_id!r} is not a valid plan in the catalogue.")
    return terms


# --- The user's plan


def user_plan_set(*, user: User, terms: PlanTerms) -> User:
    """Give the user a plan and what it gives: HD access, and its tier on their API keys (a
    staff-set enterprise tier is never changed by billing)."""
    fields: dict[str, Any] = {
        "plan": terms.plan,
        "plan_hd_access": terms.hd_access,
        "plan_key_tier": terms.key_tier,
    }
    if user.tier != Tier.ENTERPRISE:
        fields["tier"] = terms.key_tier
    changed = any(getattr(user, name) != value for name, value in fields.items())
    for name, value in fields.items():
        setattr(user, name, value)
    if changed:
        User.objects.filter(pk=user.pk).update(**fields)
        logger.info({"event": "plan_changed", "user": user.pk, "plan": terms.plan})
    keys_set_tier_for_user(user=user)
    return user


def plan_sync_for_user(*, user: User) -> User:
    """The user's plan is the best among their live subscriptions' terms (free when none). A
    cancellation at period end keeps the plan until Stripe ends the subscription."""
    live = PlanSubscription.objects.filter(user=user, status__in=LIVE_SUBSCRIPTION_STATUSES)
    best = max((terms_of(row) for row in live), key=PlanTerms.rank, default=FREE_TERMS)
    return user_plan_set(user=user, terms=best)


def plan_terms_for_staff(sender: object, *, plan: str, **kwargs: object) -> dict[str, Any] | None:
    """`accounts.signals.plan_terms` receiver: what a plan key gives, for a plan staff set by
    hand in the users admin (None: not a plan the catalogue knows)."""
    terms = selectors.plan_terms_for_key(plan)
    if terms is None:
        return None
    return {"hd_access": terms.hd_access, "key_tier": terms.key_tier}


# --- Subscriptions as Stripe reports them


def subscription_item(data: dict[str, Any]) -> dict[str, Any]:
    items = (data.get("items") or {}).get("data") or []
    return items[0] if items else {}


def _moment(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if isinstance(value, int | float) else None


def subscription_period(data: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The current period (on the item since 2025-03-31.basil, on the subscription before)."""
    item = subscription_item(data)
    start = item.get("current_period_start") or data.get("current_period_start")
    end = item.get("current_period_end") or data.get("current_period_end")
    return _moment(start), _moment(end)


def change_record(
    row: PlanSubscription, terms: PlanTerms, *, scheduled_for: datetime | None = None
) -> PlanChange:
    """Record a change from the row's terms to `terms` (applied now unless scheduled)."""
    kind = (
        PlanChangeKind.UPGRADE if terms.rank() > terms_of(row).rank() else PlanChangeKind.DOWNGRADE
    )
    return PlanChange.objects.create(
        subscription=row,
        kind=kind,
        state=PlanChangeState.SCHEDULED if scheduled_for else PlanChangeState.APPLIED,
        from_plan=row.plan,
        from_price=row.stripe_price_id,
        from_monthly_credits=row.monthly_credits,
        to_plan=terms.plan,
        to_price=terms.price_id,
        to_monthly_credits=terms.monthly_credits,
        to_hd_access=terms.hd_access,
        to_key_tier=terms.key_tier,
        to_unit_amount=terms.unit_amount,
        to_currency=terms.currency,
        effective_at=scheduled_for or timezone.now(),
        applied_at=None if scheduled_for else timezone.now(),
    )


def _change_terms(change: PlanChange) -> PlanTerms:
    return PlanTerms(
        plan=change.to_plan,
        price_id=change.to_price,
        monthly_credits=change.to_monthly_credits,
        hd_access=change.to_hd_access,
        key_tier=change.to_key_tier,
        unit_amount=change.to_unit_amount,
        currency=change.to_currency,
    )


def _change_apply(row: PlanSubscription, change: PlanChange) -> None:
    terms_set(row, _change_terms(change))
    row.save()
    PlanChange.objects.filter(pk=change.pk).update(
        state=PlanChangeState.APPLIED, applied_at=timezone.now()
    )
    logger.info({"event": "plan_change_applied", "subscription": row.stripe_subscription_id})


def _price_moved(row: PlanSubscription, price_id: str, *, new_period: bool) -> None:
    """Stripe bills the subscription at another price: apply the change it is, unless it is a
    downgrade still waiting for the end of the period it was asked in."""
    scheduled = row.changes.filter(state=PlanChangeState.SCHEDULED).first()
    if scheduled is not None and scheduled.to_price == price_id:
        if new_period or scheduled.effective_at <= timezone.now():
            _change_apply(row, scheduled)
        return
    if scheduled is not None:  # another change replaced the one that waited
        PlanChange.objects.filter(pk=scheduled.pk).update(state=PlanChangeState.CANCELLED)
    terms = _price_terms(price_id)
    change_record(row, terms)
    terms_set(row, terms)
    row.save()


def subscription_record(
    *, user: User, data: dict[str, Any], price_id: str = "", new_period: bool = False
) -> PlanSubscription:
    """Bring the subscriber's record in line with a Stripe subscription (its status, period
    and price; `price_id` overrides the item's, as billed by an invoice). A first sight takes the
    terms of its price; later, the terms change only with the plan (grandfathering).
    `new_period`: a period billed at `price_id` has begun (a renewal)."""
    sub_id = str(data["id"])
    price_id = price_id or stripe_shapes.object_id(subscription_item(data).get("price"))
    with transaction.atomic():
        row = PlanSubscription.objects.select_for_update().filter(stripe_subscription_id=sub_id)
        found = row.first()
        if found is None:
            terms = _price_terms(price_id)
            # First seen through a paid invoice (before its subscription's event): live.
            found = PlanSubscription(stripe_subscription_id=sub_id, user=user, status="active")
            terms_set(found, terms)
            logger.info({"event": "subscription_recorded", "subscription": sub_id})
        elif found.stripe_price_id != price_id:
            _price_moved(found, price_id, new_period=new_period)
        if data.get("status"):
            found.status = str(data["status"])
            found.cancel_at_period_end = bool(data.get("cancel_at_period_end"))
            found.current_period_end = subscription_period(data)[1] or found.current_period_end
        found.save()
        if found.status not in LIVE_SUBSCRIPTION_STATUSES:
            found.changes.filter(state=PlanChangeState.SCHEDULED).update(
                state=PlanChangeState.CANCELLED
            )
    return found


def plan_sync_for_customer(*, customer_id: str) -> User | None:
    """After a subscription, checkout or invoice event is mirrored: record each of the
    customer's subscriptions as dj-stripe has them, then set the user's plan."""
    customer = Customer.objects.filter(id=customer_id).select_related("subscriber").first()
    user = customer.subscriber if customer is not None else None
    if user is None:
        return None
    for data in stripe_client.subscriptions_for_customer(customer_id):
        row = PlanSubscription.objects.filter(stripe_subscription_id=str(data["id"])).first()
        if row is None and data.get("status") not in LIVE_SUBSCRIPTION_STATUSES:
            continue  # ended (or never started) before we knew it: no terms to keep
        start, _ = subscription_period(data)
        scheduled = row.changes.filter(state=PlanChangeState.SCHEDULED).first() if row else None
        # The period that began after a downgrade's effective time is billed at its price.
        new_period = bool(scheduled and start and start >= scheduled.effective_at)
        subscription_record(user=user, data=data, new_period=new_period)
    return plan_sync_for_user(user=user)


def plan_changes_apply_due() -> int:
    """Apply scheduled downgrades whose period has ended (the worker's pass; normally the
    renewal applies them first). Returns how many were applied."""
    applied = 0
    due = PlanChange.objects.filter(
        state=PlanChangeState.SCHEDULED, effective_at__lte=timezone.now()
    ).select_related("subscription__user")
    for change in due:
        with transaction.atomic():
            row = PlanSubscription.objects.select_for_update().get(pk=change.subscription_id)
            if not PlanChange.objects.filter(
                pk=change.pk, state=PlanChangeState.SCHEDULED
            ).exists():
                continue
            _change_apply(row, change)
        plan_sync_for_user(user=row.user)
        applied += 1
    return applied


# --- What an invoice grants


def period_terms(
    *, user: User, subscription_id: str, price_id: str, period_end: int | None = None
) -> PlanTerms:
    """The terms a subscription's period billed at `price_id` grants: the subscriber's own when
    that is the price they are on (grandfathered); a scheduled downgrade to that price takes
    effect with it (its renewal); otherwise that price's terms. Only the subscription's own events
    move the subscriber to another price: an invoice may arrive late, after a later change.
    Raises UnknownPlanPrice for a price outside the catalogue. `period_end`: when the billed
    period ends (unix time), kept until the subscription's own event says."""
    with transaction.atomic():
        row = (
            PlanSubscription.objects.select_for_update()
            .filter(stripe_subscription_id=subscription_id)
            .first()
        )
        if row is None:
            row = subscription_record(user=user, data={"id": subscription_id}, price_id=price_id)
        ends = _moment(period_end)
        if ends is not None and (row.current_period_end is None or row.current_period_end < ends):
            row.current_period_end = ends
            row.save(update_fields=["current_period_end", "updated_at"])
        if row.stripe_price_id != price_id:
            scheduled = row.changes.filter(
                state=PlanChangeState.SCHEDULED, to_price=price_id
            ).first()
            if scheduled is None:
                return _price_terms(price_id)
            _change_apply(row, scheduled)
    plan_sync_for_user(user=user)
    return terms_of(row)


def upgrade_credits(*, user: User, subscription_id: str, lines: list[dict[str, Any]]) -> int:
    """The monthly credits an invoice's prorations grant for the rest of the period (0 without
    any, or for a downgrade's): the difference between the old and new terms, times the share of
    the new price Stripe billed for the period. `lines`: the invoice's priced lines."""
    prorations = stripe_shapes.invoice_prorations(lines)
    charged = [line for line in prorations if line.amount > 0]
    credited = [line for line in prorations if line.amount < 0]
    if not charged:
        return 0
    to_price = charged[-1].price
    from_price = credited[0].price if credited else ""
    row = PlanSubscription.objects.filter(stripe_subscription_id=subscription_id).first()
    change = (
        PlanChange.objects.filter(
            subscription__stripe_subscription_id=subscription_id,
            kind=PlanChangeKind.UPGRADE,
            to_price=to_price,
            from_price=from_price,
        )
        .exclude(state=PlanChangeState.CANCELLED)
        .order_by("-created_at")
        .first()
    )
    if change is not None:
        old_credits, new = change.from_monthly_credits, _change_terms(change)
    else:
        # The invoice came before the subscription event: the change starts from the row.
        new = _price_terms(to_price)
        old_terms = terms_of(row) if row is not None and row.stripe_price_id == from_price else None
        old_credits = (old_terms or _price_terms(from_price)).monthly_credits if from_price else 0
        if row is not None and row.stripe_price_id == from_price:
            subscription_record(user=user, data={"id": subscription_id}, price_id=to_price)
            plan_sync_for_user(user=user)
    full_price = (new.unit_amount or 0) * max(1, charged[-1].quantity)
    if full_price <= 0 or new.monthly_credits <= old_credits:
        return 0
    share = min(Fraction(1), Fraction(sum(line.amount for line in charged), full_price))
    exact = Decimal((new.monthly_credits - old_credits) * share.numerator) / share.denominator
    return int(exact.to_integral_value(rounding=ROUND_HALF_UP))


# --- Account lifecycle (accounts.signals receivers)


def on_user_deleted(sender: object, *, user: User, **kwargs: object) -> None:
    """Cancel the deleted user's live subscriptions at Stripe, inside the deletion's transaction:
    if Stripe cannot be reached the deletion rolls back (the client sees 502 and may retry), so an
    account is never gone while its subscription keeps billing."""
    for customer in Customer.objects.filter(subscriber=user):
        for subscription in stripe_client.subscriptions_for_customer(str(customer.id)):
            if subscription.get("status") in LIVE_SUBSCRIPTION_STATUSES:
                stripe_client.subscription_cancel(str(subscription["id"]))
                logger.info(
                    {"event": "subscription_cancelled", "user": user.pk, "why": "account_deleted"}
                )
    PlanSubscription.objects.filter(user=user).update(status="canceled")
    user_plan_set(user=user, terms=FREE_TERMS)
