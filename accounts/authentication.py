"""Who is calling: one dispatcher for every credential form, used by DRF views and async views.

- `Authorization: Bearer tp_live_…|tp_test_…` or `X-API-Key: tp_…` → a developer API key
- `Authorization: Bearer tps_…` → a gateway session (POST /auth/login)
- any other bearer token → an Auth0 JWT (the SPA sends it on every request)

Each form is resolved by the app that owns it (`timepoint_billing.callers`: sessions and JWTs
here in `accounts.services`, keys in `apikeys.services`); this module adds what every form shares:
the failed-authentication throttle, the key's origin/address rules, DRF and async entry points.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from timepoint_billing import callers
from timepoint_billing.callers import Caller, CallerKind
from timepoint_billing.db import run_db
from timepoint_billing.errors import KeyNotAllowedHere, RateLimited, Unauthenticated

# A JWT from Auth0 is ~1 KB and our keys and session tokens far shorter: a longer credential is
# refused (401) before any parsing or lookup work (SECURITY.md).
MAX_CREDENTIAL_LENGTH = 8192


def credentials(request: HttpRequest) -> tuple[CallerKind, str] | None:
    api_key = request.headers.get("X-API-Key", "").strip()
    if api_key:
        return "api_key", api_key
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return callers.credential_kind(token), token


# --- The failed-authentication throttle
#
# It slows what fails and nothing else: a valid credential is always checked and always served,
# whatever other callers did from the same address (behind a proxy every client may share one).
# Counted per minute, per client address and per failing credential (a digest of it):
# - a credential that failed AUTH_FAILURE_LIMIT_PER_MINUTE times this minute is refused (429)
#   before it is looked up again: retrying one bad token costs no database or JWKS work;
# - once an address or a credential is over the limit, its further failures answer 429
#   `too_many_auth_failures` with Retry-After instead of 401.


def _failure_keys(client: str, raw: str) -> tuple[str, str, int]:
    """Cache keys counting this address's and this credential's failures this minute, and the
    seconds left in it."""
    now = time.time()
    minute = int(now // 60)
    credential = hashlib.sha256(raw.encode()).hexdigest()[:32]
    return (
        f"auth-failures:a:{client}:{minute}",
        f"auth-failures:c:{credential}:{minute}",
        60 - int(now % 60),
    )


def _too_many(seconds_left: int) -> RateLimited:
    return RateLimited(
        "Too many failed authentication attempts; retry later.",
        code="too_many_auth_failures",
        retry_after=max(1, seconds_left),
    )


def _count(key: str) -> int:
    cache.add(key, 0, timeout=61)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr, or the cache is unreachable
        cache.add(key, 1, timeout=61)
        return 1


def auth_failures_check(client: str, raw: str) -> None:
    """429 before any lookup for a credential that already failed too often this minute."""
    _, credential_key, seconds_left = _failure_keys(client, raw)
    if (cache.get(credential_key) or 0) >= settings.AUTH_FAILURE_LIMIT_PER_MINUTE:
        raise _too_many(seconds_left)


def auth_failure_record(client: str, raw: str) -> bool:
    """Count a failure for the address and the credential; True when either is over the limit."""
    address_key, credential_key, _ = _failure_keys(client, raw)
    limit = settings.AUTH_FAILURE_LIMIT_PER_MINUTE
    return _count(address_key) > limit or _count(credential_key) > limit


def _authenticate_found(client: str, kind: CallerKind, raw: str) -> Caller:
    if len(raw) > MAX_CREDENTIAL_LENGTH:
        # Before any parsing (a JWT's base64 and JSON) or lookup: no credential is this long.
        auth_failure_record(client, raw[:MAX_CREDENTIAL_LENGTH])
        raise Unauthenticated(
            f"The credential is longer than {MAX_CREDENTIAL_LENGTH} bytes.",
            code="credential_too_long",
        )
    auth_failures_check(client, raw)
    try:
        return callers.resolve(kind, raw)
    except Unauthenticated:
        if auth_failure_record(client, raw):
            raise _too_many(_failure_keys(client, raw)[2]) from None
        raise


def _client(request: HttpRequest) -> str:
    # REMOTE_ADDR is the address the server trusts: uvicorn's proxy-headers middleware replaces
    # the peer address with X-Forwarded-For only on connections from FORWARDED_ALLOW_IPS.
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def check_key_here(caller: Caller, request: HttpRequest) -> None:
    """403 `key_not_allowed_here` for an API key used from an `Origin` or a client address
    outside its lists (a speed bump for publishable keys: an `Origin` header is easily forged
    by anything that is not a browser)."""
    key = caller.api_key
    if key is None or (not key.allowed_origins and not key.allowed_cidrs):
        return
    if not key.allows_origin(request.headers.get("Origin")):
        raise KeyNotAllowedHere("This API key may not be used from this origin.")
    if not key.allows_address(request.META.get("REMOTE_ADDR")):
        raise KeyNotAllowedHere("This API key may not be used from this address.")


def authenticate(request: HttpRequest) -> Caller:
    found = credentials(request)
    if found is None:
        raise Unauthenticated()
    caller = _authenticate_found(_client(request), *found)
    request.caller_label = caller.label  # type: ignore[attr-defined]
    check_key_here(caller, request)
    return caller


def _cached_caller(kind: CallerKind, raw: str) -> Caller | None:
    """The no-I/O answer for a credential this process verified seconds ago (an API key: a valid
    credential never waits for the failure throttle); None when the full check is needed."""
    try:
        return callers.resolve_cached(kind, raw)
    except Unauthenticated:
        return None  # malformed: the full path counts the failure


# The lookups in flight on each event loop, by credential. When a key's cached answer expires
# (every KEY_CACHE_SECONDS), every request of that key in flight on the worker missed at once: under
# 64 connections that was ~30 thread hops, database queries and throttle reads per key and worker
# every 5 s, queued behind each other on the loop's few threads (the p99's spikes). One lookup now
# answers them all.
_lookups: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[CallerKind, str], asyncio.Future[Caller]]
] = weakref.WeakKeyDictionary()


def _forget_lookup(pending: dict[Any, Any], key: Any, done: asyncio.Future[Caller]) -> None:
    if pending.get(key) is done:
        del pending[key]
    if not done.cancelled():
        done.exception()  # retrieved: a failure is answered by each request's own check


async def _looked_up(client: str, kind: CallerKind, raw: str) -> Caller:
    """`_authenticate_found` off the loop, shared by the requests presenting the same credential
    at the same time. Only a success is shared: when the shared lookup fails, each other request
    runs its own full check, so every failing request is counted by the failure throttle once,
    from its own address, as before. Shielded: a request whose client leaves does not cancel the
    lookup the others wait for."""
    pending = _lookups.setdefault(asyncio.get_running_loop(), {})
    key = (kind, raw)
    shared = pending.get(key)
    if shared is None:
        shared = asyncio.ensure_future(run_db(_authenticate_found, client, kind, raw))
        pending[key] = shared
        shared.add_done_callback(lambda done: _forget_lookup(pending, key, done))
        return await asyncio.shield(shared)
    try:
        return await asyncio.shield(shared)
    except Exception:
        return await run_db(_authenticate_found, client, kind, raw)


async def aauthenticate(request: HttpRequest) -> Caller:
    """The async form for the relay views. A recently verified API key is answered on the event
    loop; otherwise database, cache and JWKS work runs off the loop."""
    found = credentials(request)
    if found is None:
        raise Unauthenticated()
    caller = _cached_caller(*found)
    if caller is None:
        caller = await _looked_up(_client(request), *found)
    request.caller_label = caller.label  # type: ignore[attr-defined]
    check_key_here(caller, request)
    return caller


class GatewayAuthentication(BaseAuthentication):
    """DRF authentication class: `request.user` is the User, `request.auth` the Caller."""

    def authenticate(self, request: Request) -> tuple[Any, Caller] | None:
        if credentials(request._request) is None:
            return None
        caller = authenticate(request._request)
        return caller.user, caller

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
