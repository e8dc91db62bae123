"""Reads for the billing API and the admin."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from accounts.models import User
from payments import catalogue
from payments.models import CreditGrant, Payment


def plan_list() -> list[dict[str, Any]]:
    return [
        {
            "name": offer.name,
            "display_name": offer.label,
            "monthly_credits": offer.monthly_credits,
            "price_cents": offer.price_cents,
            "currency": "usd",
            "hd_access": offer.hd_access,
            "api_key_tier": offer.key_tier,
            "purchasable": offer.monthly_credits > 0 and bool(offer.stripe_price_id),
        }
        for offer in catalogue.PLANS.values()
    ]


def pack_list() -> list[dict[str, Any]]:
    return [
        {
            "name": pack.name,
            "display_name": pack.label,
            "credits": pack.credits,
            "price_cents": pack.price_cents,
            "currency": "usd",
            "purchasable": bool(pack.stripe_price_id),
        }
        for pack in catalogue.PACKS.values()
    ]


def grant_list_for_user(*, user: User, limit: int = 100) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(user=user).order_by("-created_at")[:limit]


def payment_list_for_user(*, user: User, limit: int = 100) -> QuerySet[Payment]:
    return Payment.objects.filter(user=user).order_by("-created_at")[:limit]


def subscription_list_for_user(*, user: User) -> list[dict[str, Any]]:
    """The user's subscriptions as mirrored by dj-stripe."""
    from djstripe.models import Subscription

    result = []
    for subscription in Subscription.objects.filter(customer__subscriber=user).order_by("-created"):
        data = subscription.stripe_data or {}
        result.append(
            {
                "id": subscription.id,
                "status": data.get("status", ""),
                "plan": _plan_of(data),
                "cancel_at_period_end": bool(data.get("cancel_at_period_end")),
                "current_period_end": data.get("current_period_end") or _item_period_end(data),
            }
        )
    return result


def _plan_of(data: dict[str, Any]) -> str:
    from payments.services import _subscription_plan

    return _subscription_plan(data)


def _item_period_end(data: dict[str, Any]) -> Any:
    items = (data.get("items") or {}).get("data") or []
    return items[0].get("current_period_end") if items else None
