"""Reads of API keys for the API and the admin."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from apikeys.models import EXPIRY_REMINDER, APIKey, KeySpend, month_start


def _month_spent(month: date) -> Subquery:
    """Credits the key (the outer row) spent in `month`: holds and settled charges, not refunds."""
    return Subquery(
        KeySpend.objects.filter(api_key=OuterRef("pk"), month=month, refunded_at__isnull=True)
        .values("api_key")
        .annotate(total=Sum("amount"))
        .values("total")[:1],
        output_field=IntegerField(),
    )


def keys_with_month_spent(queryset: QuerySet[APIKey]) -> QuerySet[APIKey]:
    """`queryset` with `month_spent` (credits spent this UTC month) and `budget_month` on each
    key, in the same query (the keys API, the portal and the admin list)."""
    month = month_start()
    return queryset.annotate(
        month_spent=Coalesce(_month_spent(month), Value(0)), budget_month=Value(month)
    )


def key_list(*, user: User, expiring_soon: bool = False) -> QuerySet[APIKey]:
    """The user's keys, newest first, each with `request_count` (usage records written so far)
    and `month_spent` (credits spent this UTC month). `expiring_soon`: only usable keys that
    stop working within the next 7 days (the rotation reminder)."""
    keys = APIKey.objects.filter(user=user)
    if expiring_soon:
        now = timezone.now()
        keys = keys.filter(
            revoked_at__isnull=True,
            is_active=True,
            expires_at__gt=now,
            expires_at__lte=now + EXPIRY_REMINDER,
        )
    # A subquery, not a join: a second aggregate over a join would multiply the usage count.
    return keys_with_month_spent(keys.annotate(request_count=Count("usage_records"))).order_by(
        "-created_at", "-id"
    )


def key_get(*, user: User, key_id: int) -> APIKey | None:
    """The user's key with `month_spent`, or None (also for another user's key: callers answer
    404 either way)."""
    return keys_with_month_spent(APIKey.objects.filter(pk=key_id, user=user)).first()


def key_month_spent(*, key_id: int, month: date | None = None) -> int:
    """Credits the key spent (held or charged, less refunds) in the UTC month (default: now)."""
    total = KeySpend.objects.filter(
        api_key_id=key_id, month=month or month_start(), refunded_at__isnull=True
    ).aggregate(total=Sum("amount"))["total"]
    return int(total or 0)


def key_budget(key: APIKey) -> dict[str, Any]:
    """This UTC month's spend against the key's budget: `month`, `spent`, `budget` (None: no
    budget) and `remaining` (`month_spent` when `keys_with_month_spent` annotated it, else one
    query)."""
    spent = getattr(key, "month_spent", None)
    month = getattr(key, "budget_month", None) or month_start()
    if spent is None:
        spent = key_month_spent(key_id=key.pk, month=month)
    budget = key.monthly_credit_budget
    return {
        "month": month,
        "spent": int(spent),
        "budget": budget,
        "remaining": None if budget is None else max(0, budget - int(spent)),
    }


def key_export(sender: object, *, user: User, **kwargs: object) -> dict[str, object]:
    """`accounts.signals.user_export` receiver: the user's keys, without digests or secrets."""
    return {
        "api_keys": [
            {
                "id": key.pk,
                "prefix": key.prefix,
                "name": key.name,
                "mode": key.mode,
                "tier": key.tier,
                "created_at": key.created_at.isoformat(),
                "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
                "expires_at": key.expires_at.isoformat() if key.expires_at else None,
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
                "scopes": key.scopes,
                "monthly_credit_budget": key.monthly_credit_budget,
                "allowed_origins": key.allowed_origins,
                "allowed_cidrs": key.allowed_cidrs,
            }
            for key in APIKey.objects.filter(user=user).order_by("created_at", "id")
        ]
    }
