"""Your low-balance alert: read it, set or clear the threshold. An API key needs the `billing`
scope."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.scopes import Scope
from alerts import selectors, services
from alerts.serializers import AlertInputSerializer, AlertOutputSerializer
from apikeys.drf import LimitedMeteredApiView
from timepoint_billing.openapi import error_responses


class LowBalanceAlertApi(LimitedMeteredApiView):
    required_scope = Scope.BILLING

    @extend_schema(
        operation_id="billing_low_balance_alert_retrieve",
        tags=["billing"],
        summary="Your low-balance alert",
        responses={200: AlertOutputSerializer, **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        status = selectors.alert_status(user=request.user)  # type: ignore[arg-type]
        return Response(AlertOutputSerializer(status).data)

    @extend_schema(
        operation_id="billing_low_balance_alert_set",
        tags=["billing"],
        summary="Set (or clear, with null) your low-balance alert threshold",
        description="One alert per fall below the threshold, not per request: after an alert, "
        "the next one needs the balance back at or above the threshold first (a purchase, a "
        "grant). Set while already below it, the alert waits for such a top-up.",
        request=AlertInputSerializer,
        responses={200: AlertOutputSerializer, **error_responses(400, 401, 429)},
    )
    def put(self, request: Request) -> Response:
        serializer = AlertInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.alert_threshold_set(
            user=request.user,  # type: ignore[arg-type]
            threshold=serializer.validated_data["threshold"],
        )
        status = selectors.alert_status(user=request.user)  # type: ignore[arg-type]
        return Response(AlertOutputSerializer(status).data)
