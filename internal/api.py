"""The internal API's views: thin, one selector or service each (see README, "For other TIMEPOINT
services")."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import User
from internal import selectors, services
from internal.drf import InternalApiView, IsServiceCaller, ServiceKeyAuthentication
from internal.serializers import (
    BillingStatusOutputSerializer,
    CreditsCheckInputSerializer,
    CreditsCheckOutputSerializer,
    KeyVerifyInputSerializer,
    KeyVerifyOutputSerializer,
)
from timepoint_billing.errors import BadRequest, NotFound
from timepoint_billing.openapi import error_responses

USER_ID_DESCRIPTION = "The gateway's user id, the Auth0 subject or the Flash user id."


def _user(identifier: str) -> User:
    if not identifier.strip():
        raise BadRequest("Name the user (X-User-Id or user_id).", code="user_id_required")
    if len(identifier) > selectors.MAX_IDENTIFIER_LENGTH or not identifier.isprintable():
        raise BadRequest("The user id is not a valid identifier.", code="invalid_user_id")
    user = selectors.user_for_identifier(identifier)
    if user is None:
        raise NotFound("No such user.", code="user_not_found")
    return user


class BillingStatusApi(InternalApiView):
    @extend_schema(
        operation_id="internal_billing_status",
        tags=["internal"],
        summary="A user's subscription status and what it gives",
        parameters=[
            OpenApiParameter(
                "X-User-Id",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description=USER_ID_DESCRIPTION,
            )
        ],
        responses={200: BillingStatusOutputSerializer, **error_responses(400, 401, 404, 429)},
    )
    def get(self, request: Request) -> Response:
        user = _user(request.headers.get("X-User-Id", ""))
        return Response(BillingStatusOutputSerializer(selectors.billing_status(user=user)).data)


class KeyVerifyApi(InternalApiView):
    @extend_schema(
        operation_id="internal_keys_verify",
        tags=["internal"],
        summary="Verify a developer key a service received",
        description=(
            "200 whether or not the key is valid: `valid` and `code` say. Revoked, expired and "
            "rolled-past-grace keys are invalid exactly when the public routes refuse them. "
            "`charge: true` counts one request against the key's own windows."
        ),
        request=KeyVerifyInputSerializer,
        responses={200: KeyVerifyOutputSerializer, **error_responses(400, 401, 429)},
    )
    def post(self, request: Request) -> Response:
        serializer = KeyVerifyInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        answer = services.key_verify(
            raw=data["key"], scope=data["scope"], route=data["route"], charge=data["charge"]
        )
        return Response(KeyVerifyOutputSerializer(answer).data)


class CreditsCheckApi(InternalApiView):
    @extend_schema(
        operation_id="internal_credits_check",
        tags=["internal"],
        summary="Whether a user's credits cover a cost (read only)",
        description=(
            "Reads Flash's balance and subtracts what generations running through the relay "
            "hold. Nothing is spent or held: spending stays with the relay and Flash."
        ),
        parameters=[CreditsCheckInputSerializer],
        responses={
            200: CreditsCheckOutputSerializer,
            **error_responses(400, 401, 404, 429, 502, 503, 504),
        },
    )
    def get(self, request: Request) -> Response:
        query = CreditsCheckInputSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        user = _user(query.validated_data["user_id"])
        answer = services.credits_check(user=user, cost=query.validated_data["cost"])
        return Response(CreditsCheckOutputSerializer(answer).data)


class InternalSchemaApi(SpectacularAPIView):
    """The internal API's own OpenAPI document (the public one at /api/schema leaves it out)."""

    authentication_classes = [ServiceKeyAuthentication]
    permission_classes = [IsServiceCaller]
    custom_settings: dict[str, Any] = {
        "TITLE": "TIMEPOINT internal API",
        "DESCRIPTION": (
            "For TIMEPOINT's own services on the private network, never for the public. Every "
            "route needs `X-Service-Key`; user tokens, sessions and developer keys are refused."
        ),
        "PREPROCESSING_HOOKS": ["internal.openapi.internal_paths_only"],
        "SCHEMA_PATH_PREFIX": r"/internal",
    }
