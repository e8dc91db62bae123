"""Plans and subscriptions: the plan a user's live Stripe subscriptions give (HD access and key
tiers follow it), and ending those subscriptions when the account is deleted."""

from __future__ import annotations

import logging
from typing import Any

from accounts.models import Plan, Tier, User
from payments import catalogue, stripe_client

logger = logging.getLogger("timepoint.payments")

LIVE_SUBSCRIPTION_STATUSES = frozenset({"active", "trialing", "past_due"})


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


def subscription_plan(subscription: dict[str, Any]) -> str:
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
        plan = subscription_plan(subscription)
        if catalogue.PLAN_RANK[plan] > catalogue.PLAN_RANK[best]:
            best = Plan(plan)
    return user_plan_set(user=user, plan=best)


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
