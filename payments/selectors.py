"""Reads for the billing API and the admin. The account export's billing section is
`payments.export`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from djstripe.models import Subscription

from accounts.models import FREE_PLAN, User
from payments.catalogue import FREE_TERMS, PlanTerms
from payments.models import (
    RECHARGE_COUNTED_STATES,
    AutoRecharge,
    CatalogueItem,
    CatalogueKind,
    CreditGrant,
    GrantState,
    Payment,
    PlanChangeState,
    PlanSubscription,
    Recharge,
)

# --- The catalogue (payments.catalogue builds it from Stripe)


def catalogue_item(price_id: str) -> CatalogueItem | None:
    return CatalogueItem.objects.filter(stripe_price_id=price_id).first() if price_id else None


def item_on_sale(*, kind: str, key: str) -> CatalogueItem | None:
    """The price sold under `key` now, if it is on sale."""
    item = CatalogueItem.objects.filter(kind=kind, key=key, current=True).first()
    return item if item is not None and item.on_sale else None


def plan_terms_for_price(price_id: str) -> PlanTerms | None:
    """The terms of a valid plan price, on sale or not (subscribers keep prices taken off sale)."""
    item = catalogue_item(price_id)
    if item is None or item.problems or item.kind != CatalogueKind.PLAN:
        return None
    return PlanTerms.of_item(item)


def plan_terms_for_key(key: str) -> PlanTerms | None:
    """What a plan key gives: free's terms, else those of the price sold under it (or, off
    sale, of its newest valid price); None for a key the catalogue never had."""
    if key == FREE_PLAN:
        return FREE_TERMS
    item = (
        CatalogueItem.objects.filter(kind=CatalogueKind.PLAN, key=key, problems=[])
        .order_by("-current", "-price_created")
        .first()
    )
    return PlanTerms.of_item(item) if item is not None else None


def plan_label(key: str) -> str:
    terms = plan_terms_for_key(key)
    return terms.name if terms is not None and terms.name else key


def item_labels(keys: set[str]) -> dict[str, str]:
    """The name a person reads for each catalogue key (a plan's or a pack's), from its newest
    named price; a key the catalogue never named reads as itself."""
    labels: dict[str, str] = {}
    items = CatalogueItem.objects.filter(key__in=keys).exclude(name="")
    for item in items.order_by("-current", "-price_created"):
        labels.setdefault(item.key, item.name)
    if FREE_PLAN in keys:
        labels.setdefault(FREE_PLAN, FREE_TERMS.name)
    return {key: labels.get(key, key) for key in keys}


def _on_sale(kind: str) -> list[CatalogueItem]:
    items = CatalogueItem.objects.filter(kind=kind, current=True, active=True, visible=True)
    return [item for item in items.filter(problems=[]).order_by("display_order", "unit_amount")]


def plan_list() -> list[dict[str, Any]]:
    """Free, then the plans on sale in display order."""
    free = {
        "name": FREE_PLAN,
        "display_name": FREE_TERMS.name,
        "monthly_credits": 0,
        "price_cents": 0,
        "currency": "usd",
        "hd_access": False,
        "api_key_tier": FREE_TERMS.key_tier,
        "purchasable": False,
    }
    return [free] + [
        {
            "name": item.key,
            "display_name": item.name,
            "monthly_credits": item.credits,
            "price_cents": item.unit_amount,
            "currency": item.currency,
            "hd_access": item.hd_access,
            "api_key_tier": item.key_tier,
            "purchasable": True,
        }
        for item in _on_sale(CatalogueKind.PLAN)
    ]


def pack_list() -> list[dict[str, Any]]:
    """The credit packs on sale, in display order."""
    return [
        {
            "name": item.key,
            "display_name": item.name,
            "credits": item.credits,
            "price_cents": item.unit_amount,
            "currency": item.currency,
            "purchasable": True,
        }
        for item in _on_sale(CatalogueKind.PACK)
    ]


def plan_subscription(subscription_id: str) -> PlanSubscription | None:
    return PlanSubscription.objects.filter(stripe_subscription_id=subscription_id).first()


def plan_subscription_for_user(*, user: User) -> PlanSubscription | None:
    """The user's live subscription record (the best, when several)."""
    rows = PlanSubscription.objects.filter(
        user=user, status__in=("active", "trialing", "past_due")
    ).order_by("-monthly_credits", "-unit_amount", "-created_at")
    return rows.first()


def is_grandfathered(row: PlanSubscription) -> bool:
    """The subscriber keeps terms the catalogue no longer sells: another price or other credits,
    HD access or key tier than the plan's price on sale now (or the plan is off sale)."""
    item = item_on_sale(kind=CatalogueKind.PLAN, key=row.plan)
    if item is None:
        return True
    return (item.stripe_price_id, item.credits, item.hd_access, item.key_tier) != (
        row.stripe_price_id,
        row.monthly_credits,
        row.hd_access,
        row.key_tier,
    )


def subscription_view(row: PlanSubscription) -> dict[str, Any]:
    """The caller's subscription as the API and the portal show it: the terms they bought,
    whether those are grandfathered, and a downgrade waiting for the period's end."""
    scheduled = row.changes.filter(state=PlanChangeState.SCHEDULED).first()
    return {
        "id": row.stripe_subscription_id,
        "plan": row.plan,
        "display_name": plan_label(row.plan),
        "status": row.status,
        "price_cents": row.unit_amount,
        "currency": row.currency,
        "monthly_credits": row.monthly_credits,
        "hd_access": row.hd_access,
        "api_key_tier": row.key_tier,
        "cancel_at_period_end": row.cancel_at_period_end,
        "current_period_end": row.current_period_end,
        "grandfathered": is_grandfathered(row),
        "scheduled_change": (
            {
                "plan": scheduled.to_plan,
                "display_name": plan_label(scheduled.to_plan),
                "monthly_credits": scheduled.to_monthly_credits,
                "price_cents": scheduled.to_unit_amount,
                "effective_at": scheduled.effective_at,
            }
            if scheduled is not None
            else None
        ),
    }


def catalogue_refused() -> QuerySet[CatalogueItem]:
    """Prices the catalogue refuses (missing or invalid metadata), for staff."""
    return CatalogueItem.objects.exclude(problems=[]).order_by("stripe_price_id")


def grant_list_for_user(*, user: User, limit: int = 100) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(user=user).order_by("-created_at")[:limit]


def payment_list_for_user(*, user: User, limit: int = 100) -> QuerySet[Payment]:
    return Payment.objects.filter(user=user).order_by("-created_at")[:limit]


def subscription_plan(subscription_id: str, data: dict[str, Any]) -> str:
    """The plan a mirrored subscription gives: what its subscriber bought (their terms), else the
    catalogue key of its price; "" for a price outside the catalogue."""
    row = PlanSubscription.objects.filter(stripe_subscription_id=subscription_id).first()
    if row is not None:
        return row.plan
    items = (data.get("items") or {}).get("data") or []
    price = (items[0].get("price") or {}) if items else {}
    terms = plan_terms_for_price(str(price.get("id") if isinstance(price, dict) else price or ""))
    return terms.plan if terms is not None else ""


def subscription_list_for_user(*, user: User) -> list[dict[str, Any]]:
    """The user's subscriptions as mirrored by dj-stripe, and those the gateway recorded from a
    paid invoice before the mirror caught up."""
    result = []
    for subscription in Subscription.objects.filter(customer__subscriber=user).order_by("-created"):
        data = subscription.stripe_data or {}
        result.append(
            {
                "id": subscription.id,
                "status": data.get("status", ""),
                "plan": subscription_plan(str(subscription.id), data),
                "cancel_at_period_end": bool(data.get("cancel_at_period_end")),
                "current_period_end": data.get("current_period_end") or item_period_end(data),
            }
        )
    mirrored = {row["id"] for row in result}
    for bought in PlanSubscription.objects.filter(user=user).exclude(
        stripe_subscription_id__in=mirrored
    ):
        end = bought.current_period_end
        result.append(
            {
                "id": bought.stripe_subscription_id,
                "status": bought.status,
                "plan": bought.plan,
                "cancel_at_period_end": bought.cancel_at_period_end,
                "current_period_end": int(end.timestamp()) if end else None,
            }
        )
    return result


def item_period_end(data: dict[str, Any]) -> Any:
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
    counts: dict[str, int] = {}
    for subscription in Subscription.objects.all().only("id", "stripe_data"):
        data = subscription.stripe_data or {}
        if data.get("status") not in ("active", "trialing", "past_due"):
            continue
        plan = subscription_plan(str(subscription.id), data)
        label = plan_label(plan) if plan else "Unknown plan"
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


# --- Auto-recharge


@dataclass(frozen=True)
class AutoRechargeStatus:
    rule: AutoRecharge | None
    recharges_last_24h: int
    recent: list[Recharge]


def recharges_in_last_day(*, user_id: int) -> int:
    """Recharges of the last 24 hours that count against the daily cap."""
    since = timezone.now() - timedelta(days=1)
    return Recharge.objects.filter(
        user_id=user_id, created_at__gte=since, state__in=RECHARGE_COUNTED_STATES
    ).count()


def auto_recharge_status(*, user: User, recent: int = 10) -> AutoRechargeStatus:
    """The user's rule (None: never set), how many recharges count against today's cap, and the
    latest recharges with their states."""
    return AutoRechargeStatus(
        rule=AutoRecharge.objects.filter(user=user).first(),
        recharges_last_24h=recharges_in_last_day(user_id=user.pk),
        recent=list(Recharge.objects.filter(user=user).order_by("-created_at", "-id")[:recent]),
    )


def auto_recharge_turned_off(*, user: User) -> AutoRecharge | None:
    """The user's rule while it stays off after the gateway turned it off for a failed
    recharge (None once they turn it on again, or when they turned it off themselves)."""
    return AutoRecharge.objects.filter(user=user, enabled=False, failed_at__isnull=False).first()
