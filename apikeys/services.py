"""State changes for developer API keys, and the key → Caller lookup on every request's hot path.

Key format: `tp_live_` or `tp_test_`, 40 random base62 characters, then a 6-character base62
CRC32 of everything before it. The checksum lets us (and secret scanners) reject a typo or a random
string offline, before any database or cache work.

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

import hmac
import ipaddress
import logging
import secrets
import threading
import time
import zlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from hashlib import sha256
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Tier, User
from accounts.scopes import ALL_SCOPES, DEFAULT_KEY_SCOPES
from apikeys import key_stops
from apikeys.models import EXPIRY_REMINDER, APIKey, KeyMode
from timepoint_billing.callers import API_KEY_PREFIXES, Caller
from timepoint_billing.errors import BadRequest, Conflict, NotFound, Unauthenticated
from webhooks import services as webhooks

logger = logging.getLogger("timepoint.apikeys")

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_BODY_LENGTH = 40
CHECKSUM_LENGTH = 6
PREFIX_DISPLAY_LENGTH = 8  # random characters kept after "tp_live_" for display
MAX_ROLL_GRACE_SECONDS = 7 * 24 * 3600
# Positive lookups are trusted this long in-process. Revocation, expiry and the end of a roll's
# grace do not wait for it: `key_publish_lifetime` tells every process through the limiter's
# stop marker, checked in the same Redis round trip as the rate limit.
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_MAX_ENTRIES = 10_000
LAST_USED_WRITE_INTERVAL = timedelta(minutes=1)

_INVALID = "The API key is invalid, expired or revoked."


# --- Format, checksum, digest (pure functions, no I/O)


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, remainder = divmod(number, 62)
        digits.append(BASE62[remainder])
    return "".join(reversed(digits)).rjust(width, "0")


def _checksum(head: str) -> str:
    return _base62(zlib.crc32(head.encode()), CHECKSUM_LENGTH)


def key_generate(*, mode: str) -> str:
    """A new raw key; 40 base62 characters carry ~238 bits of randomness."""
    head = f"tp_{mode}_" + "".join(secrets.choice(BASE62) for _ in range(KEY_BODY_LENGTH))
    return head + _checksum(head)


def key_is_well_formed(raw: str) -> bool:
    """Prefix, length, alphabet and checksum: catches typos and garbage without any I/O."""
    if not raw.startswith(API_KEY_PREFIXES):
        return False
    rest = raw[len("tp_live_") :]
    if len(rest) != KEY_BODY_LENGTH + CHECKSUM_LENGTH or any(c not in BASE62 for c in rest):
        return False
    head, checksum = raw[:-CHECKSUM_LENGTH], raw[-CHECKSUM_LENGTH:]
    return hmac.compare_digest(_checksum(head), checksum)


def key_digest(raw: str) -> str:
    return hmac.new(settings.API_KEY_DIGEST_SECRET.encode(), raw.encode(), sha256).hexdigest()


def key_display_prefix(raw: str) -> str:
    return raw[: len("tp_live_") + PREFIX_DISPLAY_LENGTH]


# --- Lookup (hot path)

_cache_lock = threading.Lock()
# digest -> (monotonic deadline, Caller)
_key_cache: dict[str, tuple[float, Caller]] = {}


def key_cache_forget(*, digest: str | None = None) -> None:
    """Drop cached lookups in this process (one digest, or all)."""
    with _cache_lock:
        if digest is None:
            _key_cache.clear()
        else:
            _key_cache.pop(digest, None)


def _cached_caller(digest: str) -> Caller | None:
    entry = _key_cache.get(digest)
    if entry is None:
        return None
    deadline, caller = entry
    if deadline < time.monotonic():
        return None
    assert caller.api_key is not None
    # Expiry and roll grace are facts of the cached row: checked on every hit, not after 5 s.
    if caller.api_key.is_expired():
        return None
    return caller


def _remember(digest: str, caller: Caller) -> None:
    with _cache_lock:
        if len(_key_cache) >= KEY_CACHE_MAX_ENTRIES:
            _key_cache.clear()  # crude but bounded; a refill costs one indexed query per key
        _key_cache[digest] = (time.monotonic() + KEY_CACHE_SECONDS, caller)


def _touch_last_used(key: APIKey) -> None:
    """At most one write per key and minute: the conditional update is a no-op for the others."""
    now = timezone.now()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_WRITE_INTERVAL:
        return
    APIKey.objects.filter(pk=key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_WRITE_INTERVAL)
    ).update(last_used_at=now)
    key.last_used_at = now


def caller_from_api_key_cached(raw: str) -> Caller | None:
    """The no-I/O part of the lookup: a Caller if this process verified the key < 5 s ago.

    Async callers can try this on the event loop and only hop to a thread on a miss.
    Raises Unauthenticated for a malformed key (no I/O needed to know that)."""
    if not key_is_well_formed(raw):
        raise Unauthenticated(_INVALID, code="invalid_api_key")
    return _cached_caller(key_digest(raw))


def caller_from_api_key(raw: str) -> Caller:
    """The Caller for a raw API key, or Unauthenticated(code="invalid_api_key").

    Malformed or bad-checksum strings fail offline. Known keys are looked up by their digest
    (unique index), compared in constant time, and rejected when revoked, inactive, expired, rolled
    past their grace, or when the owner is deleted/inactive. A positive answer is cached in-process
    for KEY_CACHE_SECONDS; a key that stopped working meanwhile is refused by the limiter (its
    stop marker), on every process, from the moment it stopped."""
    cached = caller_from_api_key_cached(raw)
    if cached is not None:
        return cached
    digest = key_digest(raw)
    key = APIKey.objects.select_related("user").filter(key_digest=digest).first()
    if (
        key is None
        or not hmac.compare_digest(key.key_digest, digest)
        or not key.is_usable()
        or not key.user.is_active
        or key.user.deleted_at is not None
    ):
        raise Unauthenticated(_INVALID, code="invalid_api_key")
    _touch_last_used(key)
    caller = Caller(user=key.user, kind="api_key", tier=key.tier, api_key=key)
    _remember(digest, caller)
    return caller


def key_validate(*, raw: str) -> Caller:
    """Whether a raw key works *now*, on any process: the Caller, or Unauthenticated
    (`invalid_api_key`). For callers that take no rate-limit lease (e.g. an internal key-verify
    route): the lookup (cached like every request's) plus the stop marker that revocation, expiry
    and the end of a roll's grace write (one Redis read), so a key revoked through another process
    is refused at once. Sync: call it from async code through `run_db`."""
    caller = caller_from_api_key(raw)
    assert caller.api_key is not None
    if caller.api_key.is_expired() or key_stops.key_has_stopped(key_id=caller.api_key.pk):
        key_cache_forget(digest=caller.api_key.key_digest)
        raise Unauthenticated(_INVALID, code="invalid_api_key")
    return caller


def key_publish_lifetime(key: APIKey) -> None:
    """Tell every gateway process when `key` stops working, from its row as saved: revoked or
    inactive → now; an expiry (a roll's grace ends with one) → that moment; neither → never.
    Drops this process's cached lookup too. Call after the row's change is committed."""
    if not key.is_active or key.revoked_at is not None:
        moment: float | None = time.time()
    elif key.expires_at is not None:
        moment = key.expires_at.timestamp()
    else:
        moment = None
    key_stops.key_stops_at(key_id=key.pk, moment=moment)
    key_cache_forget(digest=key.key_digest)


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
