"""The caller's usage: totals per day or month, per key and per endpoint, credits spent."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.scopes import Scope
from apikeys.drf import LimitedMeteredApiView
from metering.selectors import usage_summary
from metering.serializers import UsageOutputSerializer, UsageQuerySerializer
from timepoint_billing.openapi import error_responses


class UsageApi(LimitedMeteredApiView):
    required_scope = Scope.READ

    @extend_schema(
        operation_id="usage",
        tags=["usage"],
        summary="Your usage per day or month, per key and per endpoint",
        description="From the roll-ups, refreshed by `manage.py rollup_usage` (run periodically).",
        parameters=[
            OpenApiParameter(
                "from", str, description="First UTC day, YYYY-MM-DD (default: 30 days ago)"
            ),
            OpenApiParameter("to", str, description="Last UTC day, inclusive (default: today)"),
            OpenApiParameter("granularity", str, enum=["day", "month"], description="default: day"),
        ],
        responses={200: UsageOutputSerializer, **error_responses(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params: dict[str, Any] = query.validated_data
        usage = usage_summary(
            user_id=request.auth.user.pk,
            start=params["from"],
            end=params["to"],
            granularity=params["granularity"],
        )
        return Response(UsageOutputSerializer(usage).data)
