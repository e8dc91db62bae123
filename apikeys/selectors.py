"""Reads of API keys for the API and the admin."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from accounts.models import User
from apikeys.models import APIKey


def key_list(*, user: User) -> QuerySet[APIKey]:
    """The user's keys, newest first, each with `request_count` (usage records written so far)."""
    return (
        APIKey.objects.filter(user=user)
        .annotate(request_count=Count("usage_records"))
        .order_by("-created_at", "-id")
    )


def key_get(*, user: User, key_id: int) -> APIKey | None:
    """The user's key, or None (also for another user's key: callers answer 404 either way)."""
    return APIKey.objects.filter(pk=key_id, user=user).first()


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
            }
            for key in APIKey.objects.filter(user=user).order_by("created_at", "id")
        ]
    }
