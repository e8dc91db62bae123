"""Rate limiting and metering for DRF views (keys, usage, billing): one base view.

    class KeyListApi(LimitedMeteredApiView):
        required_scope = Scope.KEYS

Every subclass declares `required_scope`: the scope (`accounts.scopes.Scope`) an API key needs,
a mapping of HTTP method to scope, or None for a route API keys cannot use anyway (it is checked
when the class is defined, so a new view cannot forget it). A key without the scope gets 403
`scope_required` after authentication and before the limiter; the OpenAPI document names it.

For an authenticated caller the view takes a limiter lease after authentication and permission
checks (`spends_credits` on the view picks the failure policy, default False), adds the limit
headers to the response, releases the lease, and queues one usage record (route pattern, status,
latency). Anonymous requests pass through untouched (they fail authentication anyway).
"""

from __future__ import annotations

import time
from typing import Any

from django.http import HttpResponseBase
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apikeys import limits
from metering.services import record_usage, usage_record_id
from timepoint_billing.callers import Caller
from timepoint_billing.openapi import required_scope


def route_pattern(request: Any) -> str:
    """`/api/v1/keys/<int:key_id>` rather than the raw path, so records group by route."""
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    return "/" + route if route else request.path


_UNDECLARED = object()
_HANDLERS = ("get", "post", "put", "patch", "delete")


class MeteredApiView(APIView):
    """The base of every rate-limited, metered DRF view: a limiter lease taken after
    authentication and permission checks (`lease_take`), its headers on the response, the lease
    released however the request ends, and one usage record for whoever `usage_of` names."""

    def lease_take(self, request: Request) -> limits.Lease | None:
        return None

    def usage_of(self, request: Request) -> dict[str, Any] | None:
        """The usage record's caller fields (user, key or service), None: no record."""
        return None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()
        self._lease: limits.Lease | None = None
        super().initial(request, *args, **kwargs)
        self._lease = self.lease_take(request)

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        lease = getattr(self, "_lease", None)
        if lease is not None:
            for name, value in lease.headers.items():
                response.setdefault(name, value)
            lease.release_sync()
        who = self.usage_of(request)
        if who is not None:
            started = getattr(self, "_started", time.perf_counter())
            record_usage(
                request_id=usage_record_id(request._request),
                endpoint=route_pattern(request._request),
                method=request.method or "",
                status=response.status_code,
                credits_spent=0,
                response_time_ms=(time.perf_counter() - started) * 1000,
                **who,
            )
        return response

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            # An exception that escaped DRF's handler must not hold the slot until its TTL.
            lease = getattr(self, "_lease", None)
            if lease is not None:
                lease.release_sync()


class LimitedMeteredApiView(MeteredApiView):
    spends_credits = False
    required_scope: Any = _UNDECLARED

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.required_scope is _UNDECLARED and any(hasattr(cls, name) for name in _HANDLERS):
            raise TypeError(
                f"{cls.__name__} must declare required_scope (a Scope, a mapping or None)"
            )

    def lease_take(self, request: Request) -> limits.Lease | None:
        caller = request.auth
        if not isinstance(caller, Caller):
            return None  # anonymous: authentication fails anyway
        caller.require_scope(required_scope(self, request.method or ""))
        return limits.acquire_sync(
            caller, route=route_pattern(request._request), spends_credits=self.spends_credits
        )

    def usage_of(self, request: Request) -> dict[str, Any] | None:
        caller = request.auth
        if not isinstance(caller, Caller):
            return None
        key = caller.api_key
        return {"user_id": caller.user.pk, "api_key_id": key.pk if key is not None else None}
