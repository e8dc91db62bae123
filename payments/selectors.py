"""Reads for the billing API and the admin."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncDate

from accounts.models import User
from payments import catalogue
from payments.models import CreditGrant, GrantState, Payment


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


# --- The admin's billing dashboard (timepoint_billing/admin_site.py)


def revenue_by_day(*, since: date) -> dict[date, int]:
    """Confirmed payment cents per UTC day since `since`, net of refunds (all providers)."""
    rows = (
        Payment.objects.filter(created_at__date__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(gross=Sum("amount_cents"), refunded=Sum("amount_refunded_cents"))
    )
    return {row["day"]: int(row["gross"] or 0) - int(row["refunded"] or 0) for row in rows}


def credits_granted_by_day(*, since: date) -> dict[date, int]:
    """Credits Flash applied per UTC day (sent grants only)."""
    rows = (
        CreditGrant.objects.filter(state=GrantState.SENT, sent_at__date__gte=since)
        .annotate(day=TruncDate("sent_at"))
        .values("day")
        .annotate(credits=Sum("amount"))
    )
    return {row["day"]: int(row["credits"] or 0) for row in rows}


def active_subscriptions_by_plan() -> list[tuple[str, int]]:
    """(plan label, count) of live dj-stripe subscriptions, most popular first."""
    from djstripe.models import Subscription

    counts: dict[str, int] = {}
    for subscription in Subscription.objects.all().only("id", "stripe_data"):
        data = subscription.stripe_data or {}
        if data.get("status") not in ("active", "trialing", "past_due"):
            continue
        offer = catalogue.PLANS.get(_plan_of(data))
        label = offer.label if offer else "Unknown plan"
        counts[label] = counts.get(label, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def grants_needing_attention() -> QuerySet[CreditGrant]:
    """Grants no worker will finish on its own soon: failed (backing off) or parked for staff."""
    return (
        CreditGrant.objects.filter(state__in=[GrantState.FAILED, GrantState.NEEDS_ATTENTION])
        .select_related("user")
        .order_by("created_at")
    )


def payments_needing_review() -> QuerySet[Payment]:
    """Refunded or disputed payments that staff have not reviewed yet."""
    return Payment.objects.filter(needs_review=True).select_related("user").order_by("-updated_at")


def billing_export(sender: object, *, user: Any, **kwargs: object) -> dict[str, object]:
    """`accounts.signals.user_export` receiver: payments and credit grants (no card data kept)."""
    payments = Payment.objects.filter(user=user).order_by("created_at", "id")
    grants = CreditGrant.objects.filter(user=user).order_by("created_at", "id")
    return {
        "payments": [
            {
                "provider": p.provider,
                "reference": p.reference,
                "product": p.product,
                "amount_cents": p.amount_cents,
                "currency": p.currency,
                "amount_refunded_cents": p.amount_refunded_cents,
                "disputed": p.disputed,
                "created_at": p.created_at.isoformat(),
            }
            for p in payments
        ],
        "credit_grants": [
            {
                "key": g.key,
                "amount": g.amount,
                "transaction_type": g.transaction_type,
                "state": g.state,
                "created_at": g.created_at.isoformat(),
                "sent_at": g.sent_at.isoformat() if g.sent_at else None,
            }
            for g in grants
        ],
    }
