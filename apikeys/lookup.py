"""API key format and the key → Caller lookup on every request's hot path.

Key format: `tp_live_` or `tp_test_`, 40 random base62 characters, then a 6-character base62
CRC32 of everything before it. The checksum lets us (and secret scanners) reject a typo or a random
string offline, before any database or cache work.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import zlib
from datetime import timedelta
from hashlib import sha256

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apikeys import key_stops
from apikeys.models import APIKey
from timepoint_billing.callers import API_KEY_PREFIXES, Caller
from timepoint_billing.errors import Unauthenticated

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_BODY_LENGTH = 40
CHECKSUM_LENGTH = 6
PREFIX_DISPLAY_LENGTH = 8  # random characters kept after "tp_live_" for display
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
            _digests.clear()
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


# raw key -> digest, for keys this process found well formed: the checksum's and the digest's
# two HMACs were a tenth of the cached lookup's cost, paid again on every request of a key.
# Bounded like `_key_cache`; a raw key is no more exposed here than in the request being served.
_digests: dict[str, str] = {}


def _digest_of_well_formed(raw: str) -> str:
    digest = _digests.get(raw)
    if digest is not None:
        return digest
    if not key_is_well_formed(raw):
        raise Unauthenticated(_INVALID, code="invalid_api_key")
    digest = key_digest(raw)
    with _cache_lock:
        if len(_digests) >= KEY_CACHE_MAX_ENTRIES:
            _digests.clear()
        _digests[raw] = digest
    return digest


def caller_from_api_key_cached(raw: str) -> Caller | None:
    """The no-I/O part of the lookup: a Caller if this process verified the key < 5 s ago.

    Async callers can try this on the event loop and only hop to a thread on a miss.
    Raises Unauthenticated for a malformed key (no I/O needed to know that)."""
    return _cached_caller(_digest_of_well_formed(raw))


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
