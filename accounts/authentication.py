"""Who is calling: one dispatcher for every credential form, used by DRF views and async views.

- `Authorization: Bearer tp_live_…|tp_test_…` or `X-API-Key: tp_…` → a developer API key
- `Authorization: Bearer tps_…` → a gateway session (POST /auth/login)
- any other bearer token → an Auth0 JWT (the SPA sends it on every request)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from timepoint_billing.db import run_db
from timepoint_billing.errors import RateLimited, Unauthenticated

if TYPE_CHECKING:
    from accounts.models import GatewaySession, User
    from apikeys.models import APIKey

CallerKind = Literal["jwt", "session", "api_key"]
API_KEY_PREFIXES = ("tp_live_", "tp_test_")
SESSION_PREFIX = "tps_"


@dataclass(frozen=True)
class Caller:
    """What every view sees about the caller: the user, and the key or session used."""

    user: User
    kind: CallerKind
    tier: str
    api_key: APIKey | None = None
    session: GatewaySession | None = None

    @property
    def is_test_mode(self) -> bool:
        """A `tp_test_` key authenticates, is limited and metered, and never spends real credits."""
        return self.api_key is not None and self.api_key.mode == "test"

    @property
    def label(self) -> str:
        """Safe for logs: a key or session prefix, never the secret."""
        if self.api_key is not None:
            return f"key:{self.api_key.prefix}"
        return f"user:{self.user.pk}"


def credentials(request: HttpRequest) -> tuple[CallerKind, str] | None:
    api_key = request.headers.get("X-API-Key", "").strip()
    if api_key:
        return "api_key", api_key
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if token.startswith(API_KEY_PREFIXES):
        return "api_key", token
    if token.startswith(SESSION_PREFIX):
        return "session", token
    return "jwt", token


def authenticate_credentials(kind: CallerKind, raw: str) -> Caller:
    """Resolve one credential to a Caller or raise Unauthenticated (sync: touches the database)."""
    from accounts import services

    if kind == "session":
        return services.caller_from_session_token(raw)
    if kind == "api_key":
        from apikeys import services as key_services

        return key_services.caller_from_api_key(raw)
    return services.caller_from_jwt(raw)


def _failure_window(client: str) -> tuple[str, int]:
    """The cache key counting this client's failures in the current minute, and seconds left."""
    now = time.time()
    return f"auth-failures:{client}:{int(now // 60)}", 60 - int(now % 60)


# Clients whose failure count was under the limit a moment ago (client -> monotonic deadline), so
# the async hot path can skip the cache read on the event loop. A failure in this process drops
# the entry at once; failures counted by other processes are seen within CLEAR_CLIENT_SECONDS.
CLEAR_CLIENT_SECONDS = 1.0
_clear_clients: dict[str, float] = {}


def _recently_clear(client: str) -> bool:
    return _clear_clients.get(client, 0.0) > time.monotonic()


def auth_failures_check(client: str) -> None:
    """429 before the credential is even looked at once a client failed too often this minute."""
    key, seconds_left = _failure_window(client)
    if (cache.get(key) or 0) >= settings.AUTH_FAILURE_LIMIT_PER_MINUTE:
        _clear_clients.pop(client, None)
        raise RateLimited(
            "Too many failed authentication attempts; retry later.",
            code="too_many_auth_failures",
            retry_after=seconds_left,
        )
    if len(_clear_clients) >= 10_000:
        _clear_clients.clear()  # bounded; a miss costs one cache read
    _clear_clients[client] = time.monotonic() + CLEAR_CLIENT_SECONDS


def auth_failure_record(client: str) -> None:
    _clear_clients.pop(client, None)
    key, _ = _failure_window(client)
    cache.add(key, 0, timeout=61)
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr, or the cache is unreachable
        cache.add(key, 1, timeout=61)


def _authenticate_found(client: str, kind: CallerKind, raw: str) -> Caller:
    auth_failures_check(client)
    try:
        return authenticate_credentials(kind, raw)
    except Unauthenticated:
        auth_failure_record(client)
        raise


def _client(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def authenticate(request: HttpRequest) -> Caller:
    found = credentials(request)
    if found is None:
        raise Unauthenticated()
    caller = _authenticate_found(_client(request), *found)
    request.caller_label = caller.label  # type: ignore[attr-defined]
    return caller


def _cached_api_key_caller(client: str, kind: CallerKind, raw: str) -> Caller | None:
    """The no-I/O answer for an API key this process verified seconds ago, from a client not
    blocked for failures a moment ago; None when the full check is needed."""
    if kind != "api_key" or not _recently_clear(client):
        return None
    from apikeys.services import caller_from_api_key_cached

    try:
        return caller_from_api_key_cached(raw)
    except Unauthenticated:
        return None  # malformed: the full path counts the failure


async def aauthenticate(request: HttpRequest) -> Caller:
    """The async form for the relay views. A recently verified API key is answered on the event
    loop; otherwise database, cache and JWKS work runs off the loop."""
    found = credentials(request)
    if found is None:
        raise Unauthenticated()
    client = _client(request)
    caller = _cached_api_key_caller(client, *found)
    if caller is None:
        caller = await run_db(_authenticate_found, client, *found)
    request.caller_label = caller.label  # type: ignore[attr-defined]
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
