"""Reads for the internal API: who a sibling means by a user id, what that user's billing allows,
and what a developer key may do."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from accounts.models import FREE_PLAN, User
from apikeys.models import APIKey
from apikeys.services import tier_for_user
from payments.selectors import (
    plan_subscription_for_user,
    plan_terms_for_key,
    subscription_list_for_user,
)

# Stripe's subscription statuses → the MCP server's contract
# (`active | trialing | past_due | canceled | none`). `unpaid` is a renewal whose retries ran out
# while Stripe keeps the subscription: past due. `paused` (a trial ended without a payment method)
# gives no access: canceled. `incomplete*` never started: none.
CONTRACT_STATUS = {
    "active": "active",
    "trialing": "trialing",
    "past_due": "past_due",
    "unpaid": "past_due",
    "paused": "canceled",
    "canceled": "canceled",
    "incomplete": "none",
    "incomplete_expired": "none",
}
# Which subscription speaks for the user when there are several: the one that gives access.
_STATUS_ORDER = ["active", "trialing", "past_due", "unpaid", "paused", "canceled"]
MAX_IDENTIFIER_LENGTH = 255
_MAX_PK_DIGITS = 18  # a bigint; longer digit strings are not gateway ids


def user_for_identifier(identifier: str) -> User | None:
    """The live user a sibling names by the gateway's user id, the Auth0 subject or the Flash
    user id (tried in that order); None for an unknown or deleted user."""
    identifier = identifier.strip()
    if not identifier or len(identifier) > MAX_IDENTIFIER_LENGTH:
        return None
    users = User.objects.filter(deleted_at__isnull=True, is_active=True)
    if identifier.isascii() and identifier.isdigit() and len(identifier) <= _MAX_PK_DIGITS:
        found = users.filter(pk=int(identifier)).first()
        if found is not None:
            return found
    return (
        users.filter(auth0_sub=identifier).first()
        or users.filter(flash_user_id=identifier).order_by("pk").first()
    )


def _iso_from_unix(value: Any) -> str | None:
    if value in (None, ""):
        return None
    try:
        return datetime.fromtimestamp(int(value), tz=UTC).isoformat()
    except (TypeError, ValueError, OverflowError):
        return None


def _rank(subscription: dict[str, Any]) -> tuple[int, int]:
    status = subscription["status"]
    order = _STATUS_ORDER.index(status) if status in _STATUS_ORDER else len(_STATUS_ORDER)
    terms = plan_terms_for_key(subscription["plan"])
    return order, -(terms.monthly_credits if terms is not None else 0)


def billing_status(*, user: User) -> dict[str, Any]:
    """What a sibling needs to gate features: the MCP contract's `subscription_tier` and
    `status`, plus HD access, the developer-key tier, monthly credits and the period end.

    `subscription_tier` is the plan the user holds now (a past-due subscription keeps it until
    Stripe ends it; a canceled one is back on free). `status` comes from the user's Stripe
    subscriptions as dj-stripe mirrors them; a paid plan with no Stripe subscription (set by
    staff) is `active` with `status_source: "staff"`."""
    subscriptions = sorted(subscription_list_for_user(user=user), key=_rank)
    chosen = subscriptions[0] if subscriptions else None
    # The subscriber's own terms (grandfathered), else what the plan key gives now.
    bought = plan_subscription_for_user(user=user)
    if bought is not None and bought.plan == user.plan:
        monthly_credits = bought.monthly_credits
    else:
        terms = plan_terms_for_key(user.plan)
        monthly_credits = terms.monthly_credits if terms is not None else 0
    if chosen is not None:
        status = CONTRACT_STATUS.get(chosen["status"], "none")
        source = "stripe"
    elif user.plan != FREE_PLAN:
        status, source = "active", "staff"
    else:
        status, source = "none", "none"
    return {
        "user_id": str(user.pk),
        "subscription_tier": user.plan,
        "status": status,
        "status_source": source,
        "hd_access": user.has_hd_access,
        "key_tier": tier_for_user(user),
        "monthly_credits": monthly_credits,
        "current_period_end": _iso_from_unix(chosen["current_period_end"]) if chosen else None,
        "cancel_at_period_end": bool(chosen and chosen["cancel_at_period_end"]),
        "stripe_status": chosen["status"] if chosen else None,
    }


def key_scopes(key: APIKey) -> list[str]:
    """What the key may do: its own scopes (`accounts.scopes.Scope`)."""
    return list(key.scopes)


def key_summary(key: APIKey) -> dict[str, Any]:
    """A key as a sibling may see it: never its digest."""
    return {
        "id": key.pk,
        "prefix": key.prefix,
        "name": key.name,
        "mode": key.mode,
        "tier": key.tier,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }


def user_summary(user: User) -> dict[str, Any]:
    return {
        "user_id": str(user.pk),
        "auth0_sub": user.auth0_sub or None,
        "flash_user_id": user.flash_user_id or None,
        "plan": user.plan,
    }
