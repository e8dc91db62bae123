"""DRF plumbing of the internal API: the service-key authentication, its permission, and the base
view that rate-limits each service under its own windows and meters the call with its name."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponseBase
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apikeys import limits
from apikeys.drf import route_pattern
from internal.services import ServiceCaller, service_authenticate
from metering.services import record_usage, usage_record_id


class ServiceKeyAuthentication(BaseAuthentication):
    """`X-Service-Key` only: `request.auth` is the ServiceCaller, `request.user` anonymous (a
    service is not a user; the user it asks about is named per call)."""

    def authenticate(self, request: Request) -> tuple[Any, ServiceCaller]:
        return AnonymousUser(), service_authenticate(request._request)

    def authenticate_header(self, request: Request) -> str:
        return 'ServiceKey realm="internal"'


class IsServiceCaller(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ServiceCaller)


class InternalApiView(APIView):
    authentication_classes = [ServiceKeyAuthentication]
    permission_classes = [IsServiceCaller]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()
        self._lease: limits.Lease | None = None
        super().initial(request, *args, **kwargs)
        caller = request.auth
        if isinstance(caller, ServiceCaller):
            self._lease = limits.acquire_subject_sync(
                subject=caller.subject, limits=caller.limits, route=route_pattern(request._request)
            )

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        lease = getattr(self, "_lease", None)
        if lease is not None:
            for name, value in lease.headers.items():
                response.setdefault(name, value)
            lease.release_sync()
        caller = request.auth
        if isinstance(caller, ServiceCaller):
            record_usage(
                request_id=usage_record_id(request._request),
                user_id=None,
                api_key_id=None,
                endpoint=route_pattern(request._request),
                method=request.method or "",
                status=response.status_code,
                credits_spent=0,
                response_time_ms=(time.perf_counter() - getattr(self, "_started", 0.0)) * 1000,
                service=caller.name,
            )
        return response

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            lease = getattr(self, "_lease", None)
            if lease is not None:
                lease.release_sync()
