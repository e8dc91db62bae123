"""State changes for identity: users, sessions, Flash user resolve, account deletion."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import zlib
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts import auth0
from accounts.models import GatewaySession, User
from accounts.signals import user_deleted
from timepoint_billing.callers import SESSION_PREFIX, Caller
from timepoint_billing.errors import ApiError, Unauthenticated
from upstreams import flash

logger = logging.getLogger("timepoint.accounts")

# Serialises the first sight of one Auth0 subject inside this process (striped: bounded memory).
_SUB_LOCKS = [threading.Lock() for _ in range(64)]
BALANCE_READ_TIMEOUT = 2.0  # seconds; `GET /auth/me` must stay fast when Flash is not


def token_digest(raw: str) -> str:
    """The stored form of a session token: HMAC-SHA256 under the server secret that keys API-key
    digests (with its own label, so a session digest never equals a key's), so a copy of the
    table alone cannot be checked against guessed tokens."""
    message = b"gateway-session:" + raw.encode()
    return hmac.new(settings.API_KEY_DIGEST_SECRET.encode(), message, hashlib.sha256).hexdigest()


def _legacy_token_digest(raw: str) -> str:
    """Before issue 22 sessions were stored as a plain SHA-256; such a row is re-keyed the first
    time its token is used. Sessions live SESSION_TOKEN_TTL_SECONDS (7 days), so after that long
    from the deploy no legacy row can still authenticate and this fallback can go."""
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
    """The caller for a raw session token, looked up by its keyed digest (a unique index) and
    compared in constant time, or Unauthenticated(code="invalid_session")."""
    digest = token_digest(raw)
    sessions = GatewaySession.objects.select_related("user")
    session = sessions.filter(token_digest=digest).first()
    if session is None and raw.startswith(SESSION_PREFIX):
        session = sessions.filter(token_digest=_legacy_token_digest(raw)).first()
        if session is not None:
            GatewaySession.objects.filter(pk=session.pk).update(token_digest=digest)
            session.token_digest = digest
    if (
        session is None
        or not hmac.compare_digest(session.token_digest, digest)
        or not session.is_active()
        or not session.user.is_active
        or session.user.deleted_at
    ):
        raise Unauthenticated(
            "The session token is invalid, expired or revoked.", code="invalid_session"
        )
    return Caller(user=session.user, kind="session", tier=session.user.tier, session=session)


def sessions_revoke(*, user: User, session: GatewaySession | None = None) -> int:
    """Revoke one session (`session`) or every active session of `user`; returns how many."""
    active = GatewaySession.objects.filter(user=user, revoked_at__isnull=True)
    if session is not None:
        active = active.filter(pk=session.pk)
    return active.update(revoked_at=timezone.now())


# --- Auth0 callers


def caller_from_jwt(raw: str) -> Caller:
    """An Auth0 access token → its caller; the user is created (and resolved in Flash) on first
    sight. Hot path: a cached verification and one indexed query."""
    claims = auth0.verify_access_token(raw)
    user = user_for_claims(claims=claims, access_token=raw)
    return Caller(user=user, kind="jwt", tier=user.tier)


def _ensure_usable(user: User) -> User:
    if user.deleted_at is not None:
        raise Unauthenticated("This account has been deleted.", code="account_deleted")
    if not user.is_active:
        raise Unauthenticated("This account is disabled.", code="account_disabled")
    return user


def user_for_claims(*, claims: dict[str, Any], access_token: str) -> User:
    sub = str(claims["sub"])
    user = User.objects.filter(auth0_sub=sub).first()
    if user is not None:
        _ensure_usable(user)
        if user.flash_user_id:
            return user
    return _ensure_usable(user_provision(sub=sub, claims=claims, access_token=access_token))


def _claim(claims: dict[str, Any], name: str) -> str:
    """A profile claim, plain or namespaced (Auth0 custom claims look like `https://x/email`)."""
    value = claims.get(name)
    if not value:
        value = next((v for k, v in claims.items() if k.endswith(f"/{name}") and v), "")
    return str(value or "").strip()


def _profile(claims: dict[str, Any], access_token: str) -> dict[str, str]:
    email, name = _claim(claims, "email"), _claim(claims, "name")
    if not email or not name:
        info = auth0.userinfo(access_token)
        email = email or _claim(info, "email")
        name = name or _claim(info, "name") or _claim(info, "nickname")
    return {"email": email[:254], "name": name[:150]}


def _username_for(sub: str) -> str:
    return sub if len(sub) <= 150 else "auth0-" + hashlib.sha256(sub.encode()).hexdigest()


def user_provision(*, sub: str, claims: dict[str, Any], access_token: str) -> User:
    """Create the local user for an Auth0 subject and resolve it in Flash, exactly once.

    A row only ever commits with its Flash id: if Flash is down, `FlashUnavailable` (503) leaves
    nothing behind and the next request retries. Threads of one process queue on a per-subject
    lock; processes on PostgreSQL queue on the unique `auth0_sub` index and the row lock, held
    across the resolve. SQLite has no row locks (and one writer): there the resolve runs before a
    short write transaction, and Flash's resolve is idempotent on `external_id` anyway.
    """
    with _SUB_LOCKS[zlib.crc32(sub.encode()) % len(_SUB_LOCKS)]:
        user = User.objects.filter(auth0_sub=sub).first()
        if user is not None and user.flash_user_id:
            return user
        profile = _profile(claims, access_token) if user is None else _row_profile(user)
        if connection.features.has_select_for_update:
            with transaction.atomic():
                user = _locked_user(sub, profile)
                if not user.flash_user_id:
                    _store_flash_id(user, _resolve(sub, profile))
            return user
        flash_user_id = _resolve(sub, profile)
        with transaction.atomic():
            user = _locked_user(sub, profile)
            if not user.flash_user_id:
                _store_flash_id(user, flash_user_id)
        return user


def flash_account_ensure(*, user: User) -> str:
    """The user's Flash id, resolving it now for a user who has none (made by staff, or whose
    first resolve failed). Flash's resolve is idempotent on the external id, so two callers racing
    here get the same id; the row keeps the first one stored. Transient trouble is
    `FlashUnavailable` (503, retry); a refusal for good is `FlashAccountRefused` (409)."""
    if user.flash_user_id:
        return str(user.flash_user_id)
    external_id = user.auth0_sub or f"gateway-user:{user.pk}"
    flash_user_id = _resolve(external_id, _row_profile(user))
    with transaction.atomic():
        row = User.objects.select_for_update().get(pk=user.pk)
        if not row.flash_user_id:
            _store_flash_id(row, flash_user_id)
    user.flash_user_id = row.flash_user_id
    return str(row.flash_user_id)


def _row_profile(user: User) -> dict[str, str]:
    return {"email": user.email, "name": user.get_full_name()}


def _resolve(sub: str, profile: dict[str, str]) -> str:
    return flash.resolve_user(external_id=sub, email=profile["email"], display_name=profile["name"])


def _locked_user(sub: str, profile: dict[str, str]) -> User:
    user, _ = User.objects.select_for_update().get_or_create(
        auth0_sub=sub,
        defaults={
            "username": _username_for(sub),
            "email": profile["email"],
            "first_name": profile["name"],
        },
    )
    return user


def _store_flash_id(user: User, flash_user_id: str) -> None:
    user.flash_user_id = flash_user_id
    user.save(update_fields=["flash_user_id"])


# --- Profile and account


def balance_lookup(*, user: User) -> flash.CreditBalance | None:
    """The user's Flash balance, or None when Flash is slow or down (the profile still loads)."""
    if not user.flash_user_id:
        return None
    try:
        return flash.balance(flash_user_id=user.flash_user_id, read_timeout=BALANCE_READ_TIMEOUT)
    except ApiError as exc:
        logger.warning("Flash balance unavailable for user %s: %s", user.pk, exc.code)
        return None


@transaction.atomic
def account_delete(*, user: User) -> None:
    """Delete an account: revoke sessions, anonymise the row, let other apps revoke what they own
    (`user_deleted`). Usage records, payments and credit grants are billing records: they keep
    pointing at the anonymised row (same pk), so totals and refunds still add up.

    The Auth0 subject is cleared, so the same person signing in again gets a new, empty account
    (and the unique index no longer ties them to this row)."""
    user = User.objects.select_for_update().get(pk=user.pk)
    if user.deleted_at is not None:
        return
    sessions_revoke(user=user)
    user.auth0_sub = None
    user.username = f"deleted-{user.pk}"
    user.email = ""
    user.first_name = ""
    user.last_name = ""
    # flash_user_id stays: it is Flash's opaque id, not a personal detail, and it is how staff
    # reconcile this row's payments, refunds and disputes against Flash's ledger (credits live
    # under it, and Flash has no way to delete a user). Grants carry their own copy; payments do
    # not.
    user.is_active = False
    user.is_staff = False
    user.is_superuser = False
    user.set_unusable_password()
    user.deleted_at = timezone.now()
    user.save()
    user_deleted.send(sender=User, user=user)
