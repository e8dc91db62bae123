"""Internal API state changes and checks: service credentials (create, revoke, look up), the
service caller's authentication, developer-key verification for siblings, credit pre-checks.

Service credentials come from two places, both kept as digests only (HMAC-SHA256 under
API_KEY_DIGEST_SECRET, exactly as developer keys are):
- the environment, `INTERNAL_SERVICE_KEYS=name:secret,…` (digested when the registry loads);
- the admin, which generates a `tp_svc_…` secret and shows it once.
Every process keeps a registry of digest → service, reloaded at most REGISTRY_SECONDS after it
was built, so a credential revoked in the admin stops working on every worker within that time.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from accounts.authentication import auth_failure_record, auth_failures_check
from accounts.models import User
from apikeys import limits
from apikeys.services import key_digest, key_display_prefix, key_generate, key_validate
from internal import selectors
from internal.models import ServiceCredential
from relay.services import reservation_total
from timepoint_billing.callers import Caller
from timepoint_billing.errors import NotFound, RateLimited, Unauthenticated
from upstreams import flash

logger = logging.getLogger("timepoint.internal")

SERVICE_KEY_PREFIX = "tp_svc_"
REGISTRY_SECONDS = 1.0
SERVICE_AUTH_HEADER = {"WWW-Authenticate": 'ServiceKey realm="internal"'}


@dataclass(frozen=True)
class ServiceCaller:
    """An authenticated sibling service: its name, its limits, and where its secret came from."""

    name: str
    limits: limits.Limits
    source: str  # "environment" | "admin"
    credential_id: int | None = None

    @property
    def subject(self) -> str:
        """Its rate-limit subject: one set of windows per service name (not per secret)."""
        return f"svc:{self.name}"

    @property
    def label(self) -> str:
        return f"service:{self.name}"


def _limits_for(credential: ServiceCredential | None) -> limits.Limits:
    return limits.Limits(
        per_minute=(credential and credential.rate_limit_per_minute)
        or settings.INTERNAL_SERVICE_RATE_LIMIT_PER_MINUTE,
        per_day=(credential and credential.rate_limit_per_day)
        or settings.INTERNAL_SERVICE_RATE_LIMIT_PER_DAY,
        concurrency=(credential and credential.concurrency_limit)
        or settings.INTERNAL_SERVICE_CONCURRENCY_LIMIT,
    )


# --- The registry (digest -> ServiceCaller), per process

_registry_lock = threading.Lock()
_registry: dict[str, Any] = {"deadline": 0.0, "signature": None, "entries": {}}


def _signature() -> tuple[Any, ...]:
    """What the registry was built from besides the database (tests change these settings)."""
    return (
        settings.API_KEY_DIGEST_SECRET,
        tuple(settings.INTERNAL_SERVICE_KEYS),
        settings.INTERNAL_SERVICE_RATE_LIMIT_PER_MINUTE,
        settings.INTERNAL_SERVICE_RATE_LIMIT_PER_DAY,
        settings.INTERNAL_SERVICE_CONCURRENCY_LIMIT,
    )


def registry_is_fresh() -> bool:
    """True when a lookup needs no I/O (the async middleware asks before hopping to a thread)."""
    return _registry["deadline"] > time.monotonic() and _registry["signature"] == _signature()


def registry_forget() -> None:
    """Reload on the next lookup (after a create or revoke in this process; tests)."""
    with _registry_lock:
        _registry["deadline"] = 0.0


def _registry_load() -> dict[str, tuple[str, ServiceCaller]]:
    entries: dict[str, tuple[str, ServiceCaller]] = {}
    for name, secret in settings.INTERNAL_SERVICE_KEYS:
        digest = key_digest(secret)
        entries[digest] = (digest, ServiceCaller(name, _limits_for(None), "environment"))
    for credential in ServiceCredential.objects.filter(revoked_at__isnull=True):
        caller = ServiceCaller(credential.name, _limits_for(credential), "admin", credential.pk)
        entries[credential.key_digest] = (credential.key_digest, caller)
    return entries


def _registry_entries() -> dict[str, tuple[str, ServiceCaller]]:
    if registry_is_fresh():
        return _registry["entries"]  # type: ignore[no-any-return]
    with _registry_lock:
        if not registry_is_fresh():
            signature = _signature()
            _registry["entries"] = _registry_load()
            _registry["signature"] = signature
            _registry["deadline"] = time.monotonic() + REGISTRY_SECONDS
        return _registry["entries"]  # type: ignore[no-any-return]


def service_caller_for(raw: str) -> ServiceCaller | None:
    """The service a secret belongs to, or None. Looked up by digest, compared in constant time
    (as developer keys are); may read the database when the registry is due for a reload."""
    if not raw:
        return None
    digest = key_digest(raw)
    found = _registry_entries().get(digest)
    if found is None:
        return None
    stored, caller = found
    return caller if hmac.compare_digest(stored, digest) else None


def service_credential_create(
    *, name: str, note: str = "", **limit_overrides: int | None
) -> tuple[ServiceCredential, str]:
    """A new `tp_svc_…` credential for `name`; the secret is returned once and never stored."""
    raw = key_generate(mode="svc")
    credential = ServiceCredential.objects.create(
        name=name,
        note=note,
        key_digest=key_digest(raw),
        prefix=key_display_prefix(raw),
        **{field: value for field, value in limit_overrides.items() if value is not None},
    )
    registry_forget()
    logger.info({"event": "service_credential_created", "service": name, "key": credential.prefix})
    return credential, raw


def service_credential_revoke(*, credential: ServiceCredential) -> ServiceCredential:
    """Revoke one credential (idempotent). This process stops accepting it at once, the others
    within REGISTRY_SECONDS."""
    if credential.revoked_at is None:
        credential.revoked_at = timezone.now()
        credential.save(update_fields=["revoked_at"])
    registry_forget()
    logger.info(
        {
            "event": "service_credential_revoked",
            "service": credential.name,
            "key": credential.prefix,
        }
    )
    return credential


# --- Authentication of internal requests


def carries_public_credentials(request: HttpRequest) -> bool:
    """A bearer token (JWT, gateway session, developer key) or an `X-API-Key`."""
    return bool(
        request.META.get("HTTP_AUTHORIZATION", "").strip()
        or request.META.get("HTTP_X_API_KEY", "").strip()
    )


def service_authenticate(request: HttpRequest) -> ServiceCaller:
    """The service behind `X-Service-Key`, or Unauthenticated. Public credentials on an internal
    route are refused outright, even next to a valid service key: an internal route never acts
    for a public caller. Failures count toward the client address's failure throttle."""
    if carries_public_credentials(request):
        raise Unauthenticated(
            "Internal routes accept only a service credential (X-Service-Key); "
            "user tokens, sessions and API keys are refused here.",
            code="public_credential_refused",
            headers=SERVICE_AUTH_HEADER,
        )
    raw = request.META.get("HTTP_X_SERVICE_KEY", "").strip()
    if not raw:
        raise Unauthenticated(
            "X-Service-Key is required.", code="service_key_required", headers=SERVICE_AUTH_HEADER
        )
    client = str(request.META.get("REMOTE_ADDR") or "unknown")
    auth_failures_check(client, raw)  # this very key failed too often: refused unlooked-up
    caller = service_caller_for(raw)
    if caller is None:
        if auth_failure_record(client, raw):
            auth_failures_check(client, raw)  # over the limit now: 429 with Retry-After
        raise Unauthenticated(
            "The service key is invalid or revoked.",
            code="invalid_service_key",
            headers=SERVICE_AUTH_HEADER,
        )
    request.caller_label = caller.label  # type: ignore[attr-defined]
    return caller


# --- Developer-key verification for siblings


def _window_state(used: int | None, limit: int, reset: int) -> dict[str, int | None]:
    return {
        "limit": limit,
        "used": used,
        "remaining": None if used is None else max(0, limit - used),
        "reset": reset,
    }


def _rate_limit_state(
    caller: Caller, *, charged: bool, lease: limits.Lease | None = None
) -> dict[str, Any]:
    state = limits.peek_sync(caller)
    minute_used, day_used = state.minute_used, state.day_used
    if lease is not None and lease.minute_used is not None:
        minute_used, day_used = lease.minute_used, lease.day_used
    return {
        "charged": charged,
        "minute": _window_state(minute_used, state.limits.per_minute, state.minute_reset),
        "day": _window_state(day_used, state.limits.per_day, state.day_reset),
        "concurrency_limit": state.limits.concurrency,
    }


def key_verify(
    *, raw: str, scope: str = "", route: str = "", charge: bool = False
) -> dict[str, Any]:
    """Whether a developer key a sibling received is good for `scope`, and for whom.

    The key goes through `key_validate`: the lookup the public routes use plus the stop marker
    that revocation, expiry and the end of a roll's grace publish to every process, so a key
    revoked through another worker is invalid here at once. With
    `charge`, one request is counted against the key's own minute and day windows (the ones the
    gateway counts), so a key's limits hold across the gateway and the sibling; a key over its
    limit is then invalid with `rate_limited` and `retry_after`. The raw key is never logged."""
    try:
        caller = key_validate(raw=raw)
    except Unauthenticated:
        return {"valid": False, "code": "invalid_api_key"}
    key = caller.api_key
    assert key is not None
    scopes = selectors.key_scopes(key)
    answer: dict[str, Any] = {
        "valid": True,
        "code": "valid",
        "key": selectors.key_summary(key),
        "owner": selectors.user_summary(caller.user),
        "tier": caller.tier,
        "scopes": scopes,
    }
    if scope and scope not in scopes:
        answer.update(
            valid=False, code="scope_required", rate_limit=_rate_limit_state(caller, charged=False)
        )
        return answer
    if not charge:
        answer["rate_limit"] = _rate_limit_state(caller, charged=False)
        return answer
    try:
        lease = limits.acquire_sync(
            caller, route=route or "/internal/keys/verify", spends_credits=False
        )
    except Unauthenticated:
        return {"valid": False, "code": "invalid_api_key"}  # the limiter saw the key stop
    except RateLimited as exc:
        answer.update(
            valid=False,
            code="rate_limited",
            retry_after=int(exc.headers.get("Retry-After", "1")),
            rate_limit=_rate_limit_state(caller, charged=False),
        )
        return answer
    # The sibling holds no slot of ours while it serves the call: only the windows are charged.
    lease.release_sync()
    answer["rate_limit"] = _rate_limit_state(caller, charged=True, lease=lease)
    return answer


# --- Credits


def credits_check(*, user: User, cost: int) -> dict[str, Any]:
    """Whether the user's Flash balance covers `cost` beyond what running generations already
    hold (the relay's reservations). Reads only: spending stays with the relay and Flash."""
    if not user.flash_user_id:
        raise NotFound("The user has no credit account yet.", code="credit_account_not_found")
    balance = int(flash.balance(flash_user_id=user.flash_user_id)["balance"])
    reserved = reservation_total(user.flash_user_id)
    available = balance - reserved
    return {
        "sufficient": available >= cost,
        "balance": balance,
        "reserved": reserved,
        "available": available,
        "cost": cost,
        "user_id": str(user.pk),
    }
