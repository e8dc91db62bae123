"""State changes for developer API keys: create, update, revoke, roll, tiers. The key format and
the key → Caller lookup on the hot path are in `apikeys.lookup` (re-exported here for other apps).

What a `tp_test_` key does (modelled on Stripe's test mode):
- it authenticates exactly like a live key and belongs to the same user;
- it is rate limited (same tier, same windows, its own counters) and metered like a live key;
- it never spends real credits: the relay must not forward a credit-spending call (generation) for a
  test key to Flash as a real spend. It answers such calls with a simulated result instead (or
  refuses them), and meters them with `credits_spent=0`. Check `caller.is_test_mode`.
- Reads (balance, history, Clockchain browse) behave as for a live key.
Test keys do not count toward the live-key cap.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Tier, User
from accounts.scopes import ALL_SCOPES, DEFAULT_KEY_SCOPES
from apikeys.lookup import (
    key_cache_forget,
    key_digest,
    key_display_prefix,
    key_generate,
    key_publish_lifetime,
)
from apikeys.lookup import key_validate as key_validate  # other apps' (internal) way in
from apikeys.models import EXPIRY_REMINDER, APIKey, KeyMode
from timepoint_billing.errors import BadRequest, Conflict, NotFound
from webhooks import services as webhooks

logger = logging.getLogger("timepoint.apikeys")

MAX_ROLL_GRACE_SECONDS = 7 * 24 * 3600


# --- Key lifecycle


_TIER_RANK = {Tier.FREE: 0, Tier.PRO: 1, Tier.ENTERPRISE: 2}


def tier_for_user(user: User) -> str:
    """The tier the user's keys carry: the higher of the tier their plan gives (its catalogue
    terms when it took effect, `plan_key_tier`) and the user's own tier, which staff may raise to
    pro or enterprise in the users admin (payments keeps it equal to the plan's tier otherwise)."""
    plan_tier = Tier(user.plan_key_tier) if user.plan_key_tier in Tier.values else Tier.FREE
    own = Tier(user.tier) if user.tier in Tier.values else Tier.FREE
    return max(plan_tier, own, key=_TIER_RANK.__getitem__)


def _live_keys(user: User) -> int:
    """Live keys that still authenticate, including rolled keys inside their grace period."""
    now = timezone.now()
    return (
        APIKey.objects.filter(user=user, mode=KeyMode.LIVE, revoked_at__isnull=True, is_active=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .count()
    )


def _check_live_key_cap(user: User) -> None:
    """409 `key_limit_reached` when one more live key would pass MAX_LIVE_KEYS_PER_USER.
    Call with the user row locked, so two parallel requests can't both pass."""
    if _live_keys(user) >= settings.MAX_LIVE_KEYS_PER_USER:
        raise Conflict(
            f"At most {settings.MAX_LIVE_KEYS_PER_USER} live keys; revoke one first.",
            code="key_limit_reached",
        )


# --- What the owner controls: scopes, budget, origins and addresses

MAX_ALLOWED_ENTRIES = 20  # origins, and CIDRs, per key


def clean_scopes(scopes: Iterable[str]) -> list[str]:
    """Known scopes, each once, in the canonical order; at least one."""
    chosen = set(scopes)
    unknown = sorted(chosen - set(ALL_SCOPES))
    if unknown:
        raise BadRequest(
            f"Unknown scope(s): {', '.join(unknown)}. Known: {', '.join(ALL_SCOPES)}.",
            code="invalid_request",
        )
    if not chosen:
        raise BadRequest("A key needs at least one scope.", code="invalid_request")
    return [scope for scope in ALL_SCOPES if scope in chosen]


def clean_origins(origins: Iterable[str]) -> list[str]:
    """`scheme://host[:port]` browser origins (http or https), lower-cased, each once."""
    cleaned: list[str] = []
    for raw in origins:
        text = str(raw).strip().rstrip("/").lower()
        parts = urlsplit(text)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
            or f"{parts.scheme}://{parts.netloc}" != text
        ):
            raise BadRequest(
                f"{raw!r} is not an origin like https://app.example.com.", code="invalid_request"
            )
        if text not in cleaned:
            cleaned.append(text)
    if len(cleaned) > MAX_ALLOWED_ENTRIES:
        raise BadRequest(f"At most {MAX_ALLOWED_ENTRIES} origins.", code="invalid_request")
    return cleaned


def clean_cidrs(cidrs: Iterable[str]) -> list[str]:
    """IPv4/IPv6 networks (`203.0.113.0/24`, a bare address means just it), normalised."""
    cleaned: list[str] = []
    for raw in cidrs:
        try:
            network = str(ipaddress.ip_network(str(raw).strip(), strict=False))
        except ValueError:
            raise BadRequest(f"{raw!r} is not an IP network (CIDR).", code="invalid_request")
        if network not in cleaned:
            cleaned.append(network)
    if len(cleaned) > MAX_ALLOWED_ENTRIES:
        raise BadRequest(f"At most {MAX_ALLOWED_ENTRIES} networks.", code="invalid_request")
    return cleaned


def _clean_expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is not None and expires_at <= timezone.now():
        raise BadRequest("expires_at must be in the future.", code="invalid_request")
    return expires_at


@transaction.atomic
def key_create(
    *,
    user: User,
    name: str,
    mode: str = KeyMode.LIVE,
    scopes: Iterable[str] = DEFAULT_KEY_SCOPES,
    monthly_credit_budget: int | None = None,
    expires_at: datetime | None = None,
    allowed_origins: Iterable[str] = (),
    allowed_cidrs: Iterable[str] = (),
) -> tuple[APIKey, str]:
    """A new key for `user`; the raw key is returned once and never stored.

    The tier comes from the user's plan, never from the caller. Live keys are capped at
    MAX_LIVE_KEYS_PER_USER (409 `key_limit_reached`). Scopes default to read, generate and
    publish (`keys` and `billing` only when asked for)."""
    if mode not in KeyMode.values:
        raise BadRequest("mode must be 'live' or 'test'.", code="invalid_request")
    controls = {
        "scopes": clean_scopes(scopes),
        "monthly_credit_budget": monthly_credit_budget,
        "expires_at": _clean_expiry(expires_at),
        "allowed_origins": clean_origins(allowed_origins),
        "allowed_cidrs": clean_cidrs(allowed_cidrs),
    }
    # Lock the user row so two parallel creates can't both pass the cap.
    User.objects.select_for_update().filter(pk=user.pk).first()
    if mode == KeyMode.LIVE:
        _check_live_key_cap(user)
    raw = key_generate(mode=mode)
    key = APIKey.objects.create(
        user=user,
        name=name,
        mode=mode,
        key_digest=key_digest(raw),
        prefix=key_display_prefix(raw),
        tier=tier_for_user(user),
        **controls,
    )
    return key, raw


# The owner-editable fields of `key_update`, each with its cleaner.
_EDITABLE: dict[str, Any] = {
    "name": lambda value: str(value),
    "scopes": clean_scopes,
    "monthly_credit_budget": lambda value: value,
    "expires_at": _clean_expiry,
    "allowed_origins": clean_origins,
    "allowed_cidrs": clean_cidrs,
}


def key_update(*, user: User, key_id: int, **changes: Any) -> APIKey:
    """Change the owner-editable settings of the user's key (name, scopes, monthly budget,
    expiry, origins, CIDRs); fields not given stay. This process forgets the cached key at once,
    the other workers when their cache entry ends; a new expiry reaches every worker at once (the
    limiter's stop marker). A budget lowered under this month's spend stops further
    generations; nothing spent is undone.

    The expiry of a key that no longer works, or of a rolled key (its grace period), cannot
    change: 409 `key_not_active`, so an edit never brings a stopped key back."""
    unknown = sorted(set(changes) - set(_EDITABLE))
    if unknown:
        raise BadRequest(f"Not editable: {', '.join(unknown)}.", code="invalid_request")
    key = _owned_key(user, key_id)
    if "expires_at" in changes and (not key.is_usable() or key.replaced_by_id is not None):
        raise Conflict(
            "This key is revoked, expired or rolled: its expiry cannot change.",
            code="key_not_active",
        )
    for field, value in changes.items():
        setattr(key, field, _EDITABLE[field](value))
    if changes:
        key.save(update_fields=list(changes))
    if "expires_at" in changes:
        key_publish_lifetime(key)
    key_cache_forget(digest=key.key_digest)
    logger.info(
        {"event": "api_key_updated", "key": key.prefix, "user": user.pk, "fields": sorted(changes)}
    )
    return key


def _owned_key(user: User, key_id: int) -> APIKey:
    """The user's key or 404 (never 403: another user's key id must not be confirmed)."""
    key = APIKey.objects.filter(pk=key_id, user=user).first()
    if key is None:
        raise NotFound("No such API key.", code="key_not_found")
    return key


def key_revoke(*, user: User, key_id: int) -> APIKey:
    """Revoke the user's key. Idempotent: revoking a revoked key changes nothing."""
    key = _owned_key(user, key_id)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.is_active = False
        with transaction.atomic():  # the key.revoked webhook commits with the revocation
            key.save(update_fields=["revoked_at", "is_active"])
            webhooks.key_revoked(key=key)
    key_publish_lifetime(key)
    logger.info({"event": "api_key_revoked", "key": key.prefix, "user": user.pk})
    return key


@transaction.atomic
def key_roll(*, user: User, key_id: int, grace_seconds: int) -> tuple[APIKey, str]:
    """Replace a key: a new key with the same name, mode, limits, scopes, budget and origin/address
    lists (not its expiry); the old one keeps working
    for `grace_seconds` (0 … 7 days), then stops. Rolling a revoked or expired key is refused.

    A live key in its grace period still counts toward MAX_LIVE_KEYS_PER_USER (otherwise rolling
    over and over would give any number of working keys): a roll with grace at the cap is 409
    `key_limit_reached`, like a create; a roll without grace swaps one key for one and is fine."""
    if not 0 <= grace_seconds <= MAX_ROLL_GRACE_SECONDS:
        raise BadRequest("grace_seconds must be between 0 and 604800.", code="invalid_request")
    User.objects.select_for_update().filter(pk=user.pk).first()  # serialises with key_create
    old = APIKey.objects.select_for_update().filter(pk=key_id, user=user).first()
    if old is None:
        raise NotFound("No such API key.", code="key_not_found")
    if not old.is_usable() or old.replaced_by_id is not None:
        raise Conflict("This key is revoked, expired or already rolled.", code="key_not_active")
    if old.mode == KeyMode.LIVE and grace_seconds > 0:
        _check_live_key_cap(user)
    raw = key_generate(mode=old.mode)
    new = APIKey.objects.create(
        user=user,
        name=old.name,
        mode=old.mode,
        key_digest=key_digest(raw),
        prefix=key_display_prefix(raw),
        tier=old.tier,
        rate_limit_per_minute=old.rate_limit_per_minute,
        rate_limit_per_day=old.rate_limit_per_day,
        concurrency_limit=old.concurrency_limit,
        # The owner's controls go with the key; a new expiry is the owner's to set again.
        scopes=old.scopes,
        monthly_credit_budget=old.monthly_credit_budget,
        allowed_origins=old.allowed_origins,
        allowed_cidrs=old.allowed_cidrs,
    )
    now = timezone.now()
    deadline = now + timedelta(seconds=grace_seconds)
    old.expires_at = deadline if old.expires_at is None else min(old.expires_at, deadline)
    old.replaced_by = new
    fields = ["expires_at", "replaced_by"]
    if grace_seconds == 0:
        old.revoked_at = now
        old.is_active = False
        fields += ["revoked_at", "is_active"]
    old.save(update_fields=fields)
    if old.revoked_at is not None:
        webhooks.key_revoked(key=old)
    key_publish_lifetime(old)  # the row's last change: every process honours it at once
    return new, raw


def keys_expiring_announce() -> int:
    """key.expiring webhooks for usable keys that entered their last EXPIRY_REMINDER (7 days),
    once per key and expiry; the background worker calls this. A rolled key in its grace period
    is left out: its owner already replaced it. Returns how many events were made."""
    now = timezone.now()
    keys = APIKey.objects.filter(
        revoked_at__isnull=True,
        is_active=True,
        replaced_by__isnull=True,
        expires_at__gt=now,
        expires_at__lte=now + EXPIRY_REMINDER,
    )
    return webhooks.keys_expiring(keys=keys)


def keys_set_tier_for_user(*, user: User) -> int:
    """Give every unrevoked key of the user the owner's tier (`tier_for_user`); payments calls
    this on a plan change, the users admin on a plan or tier change. Returns the keys changed.

    The tier follows the owner in both directions: an enterprise user moved back to free gets
    free keys again. A key's `tier` column does not record who set it, so a tier edited on one
    key in the keys admin cannot be told apart from one copied from its owner, and is realigned
    here; the per-key staff overrides the model does distinguish (`rate_limit_per_minute`,
    `rate_limit_per_day`, `concurrency_limit`, null meaning "the tier's value") are never
    touched, so a deal negotiated for one key survives every tier change. This process's key
    cache is dropped; other processes pick the new tier up within KEY_CACHE_SECONDS."""
    target = tier_for_user(user)
    changed = (
        APIKey.objects.filter(user=user, revoked_at__isnull=True)
        .exclude(tier=target)
        .update(tier=target)
    )
    key_cache_forget()
    return changed


def keys_revoke_all_for_user(*, user: User) -> int:
    """Revoke every key of the user (account deletion). Returns the number revoked."""
    now = timezone.now()
    keys = list(APIKey.objects.filter(user=user, revoked_at__isnull=True))
    revoked = APIKey.objects.filter(pk__in=[k.pk for k in keys]).update(
        revoked_at=now, is_active=False
    )
    for key in keys:
        key.revoked_at, key.is_active = now, False
        key_publish_lifetime(key)
    key_cache_forget()
    return revoked


def on_user_deleted(sender: object, *, user: User, **kwargs: object) -> None:
    """`accounts.signals.user_deleted` receiver: a deleted account's keys stop working at once."""
    keys_revoke_all_for_user(user=user)
