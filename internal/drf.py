"""DRF plumbing of the internal API: the service-key authentication, its permission, and the base
view that rate-limits each service under its own windows and meters the call with its name."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from apikeys import limits
from apikeys.drf import MeteredApiView, route_pattern
from internal.services import ServiceCaller, service_authenticate


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


class InternalApiView(MeteredApiView):
    """Each service is limited under its own windows and metered with its name."""

    authentication_classes = [ServiceKeyAuthentication]
    permission_classes = [IsServiceCaller]

    def lease_take(self, request: Request) -> limits.Lease | None:
        caller = request.auth
        if not isinstance(caller, ServiceCaller):
            return None
        return limits.acquire_subject_sync(
            subject=caller.subject, limits=caller.limits, route=route_pattern(request._request)
        )

    def usage_of(self, request: Request) -> dict[str, Any] | None:
        caller = request.auth
        if not isinstance(caller, ServiceCaller):
            return None
        return {"user_id": None, "api_key_id": None, "service": caller.name}
