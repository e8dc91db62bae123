"""State changes for identity: users, sessions, Flash user resolve."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from accounts.authentication import SESSION_PREFIX, Caller
from accounts.models import GatewaySession, User
from timepoint_billing.errors import Unauthenticated


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def session_create(*, user: User) -> tuple[GatewaySession, str]:
    """A new session; the raw token is returned once and only its digest is stored."""
    raw = SESSION_PREFIX + secrets.token_urlsafe(32)
    expires_at: datetime = timezone.now() + timedelta(seconds=settings.SESSION_TOKEN_TTL_SECONDS)
    session = GatewaySession.objects.create(
        user=user, token_digest=token_digest(raw), prefix=raw[:10], expires_at=expires_at
    )
    return session, raw


def caller_from_session_token(raw: str) -> Caller:
    session = (
        GatewaySession.objects.select_related("user").filter(token_digest=token_digest(raw)).first()
    )
    if (
        session is None
        or not session.is_active()
        or not session.user.is_active
        or session.user.deleted_at
    ):
        raise Unauthenticated(
            "The session token is invalid, expired or revoked.", code="invalid_session"
        )
    return Caller(user=session.user, kind="session", tier=session.user.tier, session=session)


def caller_from_jwt(raw: str) -> Caller:
    # Replaced by the Auth0 JWT verification (issue 4).
    raise Unauthenticated("Auth0 tokens are not accepted yet.", code="invalid_token")
