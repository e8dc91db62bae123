"""Reads for the identity endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from accounts.models import GatewaySession, User
from accounts.signals import plan_terms as plan_terms_signal
from accounts.signals import user_export as user_export_signal

EXPORT_PROFILE_FIELDS = (
    "id",
    "username",
    "email",
    "first_name",
    "last_name",
    "auth0_sub",
    "flash_user_id",
    "plan",
    "plan_hd_access",
    "plan_key_tier",
    "tier",
    "date_joined",
    "last_login",
    "deleted_at",
)
EXPORT_SESSION_FIELDS = ("prefix", "created_at", "expires_at", "revoked_at")


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def session_list(*, user: User) -> list[GatewaySession]:
    return list(GatewaySession.objects.filter(user=user).order_by("-created_at"))


def user_export(*, user: User) -> dict[str, Any]:
    """Everything stored about the user: profile and sessions (prefixes and dates, never digests)
    here, plus the sections other apps add through the `user_export` signal."""
    document: dict[str, Any] = {
        "exported_at": timezone.now().isoformat(),
        "profile": {name: _plain(getattr(user, name)) for name in EXPORT_PROFILE_FIELDS},
        "sessions": [
            {name: _plain(getattr(session, name)) for name in EXPORT_SESSION_FIELDS}
            for session in session_list(user=user)
        ],
    }
    for _receiver, sections in user_export_signal.send(sender=User, user=user):
        added: Any = sections
        document.update(added or {})
    return document


def plan_terms(plan: str) -> dict[str, Any] | None:
    """What a plan key gives (`hd_access`, `key_tier`), from whichever app knows the catalogue
    (`accounts.signals.plan_terms`); None for a key nobody knows."""
    for _, answer in plan_terms_signal.send(sender=User, plan=plan):
        if isinstance(answer, dict):
            return dict(answer)
    return None
