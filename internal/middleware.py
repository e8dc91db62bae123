"""Keeps the two kinds of caller apart, before any view runs (issue 20):

- `/internal/…` exists only where the settings say: INTERNAL_API_ENABLED off, a request on
  another listener than INTERNAL_API_PORT, or from outside INTERNAL_API_ALLOWED_NETWORKS gets the
  same 404 as an unknown path. The internal listener serves nothing else but /health.
- Every other route refuses internal credentials: an `X-Service-Key` that is a valid service
  credential, or a `tp_svc_…` secret sent as a bearer token or `X-API-Key`, is 401
  `internal_credential_refused`. (A service may act for any user it names; a public route must
  never be where that power is presented.) Unknown `X-Service-Key` values are ignored, as any
  header the public API does not read.

Public credentials on internal routes are refused by the internal views' authentication
(`internal.services.service_authenticate`).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from internal import services
from internal.openapi import INTERNAL_PATH_PREFIX
from timepoint_billing.db import run_db
from timepoint_billing.dual_middleware import SyncAsyncMiddleware
from timepoint_billing.errors import error_response

_LISTENER_SHARED_PATHS = ("/health",)
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(spec: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in spec)


def _not_found() -> HttpResponse:
    return error_response(404, "Not found.", "not_found")


def _refused() -> HttpResponse:
    return error_response(
        401,
        "Service credentials are accepted only on the internal API; this route needs a user "
        "token, session or API key.",
        "internal_credential_refused",
        {"WWW-Authenticate": 'Bearer realm="api"'},
    )


def _is_internal(request: HttpRequest) -> bool:
    path = request.path_info
    return path.startswith(INTERNAL_PATH_PREFIX) or path == INTERNAL_PATH_PREFIX.rstrip("/")


def _on_internal_listener(request: HttpRequest) -> bool:
    return str(request.META.get("SERVER_PORT", "")) == str(settings.INTERNAL_API_PORT)


def _internal_reachable(request: HttpRequest) -> bool:
    if not settings.INTERNAL_API_ENABLED:
        return False
    if settings.INTERNAL_API_PORT and not _on_internal_listener(request):
        return False
    allowed = settings.INTERNAL_API_ALLOWED_NETWORKS
    if allowed:
        try:
            address = ipaddress.ip_address(str(request.META.get("REMOTE_ADDR", "")))
        except ValueError:
            return False
        return any(address in network for network in _networks(tuple(allowed)))
    return True


def _service_secret_as_public_credential(request: HttpRequest) -> bool:
    token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")[2].strip()
    api_key = request.META.get("HTTP_X_API_KEY", "").strip()
    return token.startswith(services.SERVICE_KEY_PREFIX) or api_key.startswith(
        services.SERVICE_KEY_PREFIX
    )


def _early_answer(request: HttpRequest) -> HttpResponse | None:
    """The answer that needs no credential lookup, if any."""
    if _is_internal(request):
        return None if _internal_reachable(request) else _not_found()
    if (
        settings.INTERNAL_API_PORT
        and _on_internal_listener(request)
        and not request.path_info.startswith(_LISTENER_SHARED_PATHS)
    ):
        return _not_found()  # the private listener is not a second public door
    if _service_secret_as_public_credential(request):
        return _refused()
    return None


async def separation_answer(request: HttpRequest) -> HttpResponse | None:
    """What the middleware answers in an async stack before any view runs (None: go on); also
    called by the relay's lane (timepoint_billing/relay_lane.py)."""
    answer = _early_answer(request)
    if answer is not None:
        return answer
    service_key = request.META.get("HTTP_X_SERVICE_KEY", "").strip()
    if service_key and not _is_internal(request):
        # Rare (no public client sends it): a thread hop only when the registry is stale.
        if services.registry_is_fresh():
            known = services.service_caller_for(service_key)
        else:
            known = await run_db(services.service_caller_for, service_key)
        if known is not None:
            return _refused()
    return None


class CallerSeparationMiddleware(SyncAsyncMiddleware):
    def call(self, request: HttpRequest) -> Any:
        answer = _early_answer(request)
        if answer is not None:
            return answer
        service_key = request.META.get("HTTP_X_SERVICE_KEY", "").strip()
        if service_key and not _is_internal(request):
            if services.service_caller_for(service_key) is not None:
                return _refused()
        return self.get_response(request)

    async def acall(self, request: HttpRequest) -> Any:
        return await separation_answer(request) or await self.get_response(request)
