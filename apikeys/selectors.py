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
