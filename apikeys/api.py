"""Key endpoints: create, list, revoke, roll, per-key usage. Owner only; other ids → 404."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys import selectors, services
from apikeys.drf import LimitedMeteredApiView
from apikeys.serializers import (
    KeyCreatedOutputSerializer,
    KeyCreateInputSerializer,
    KeyOutputSerializer,
    KeyRollInputSerializer,
    KeyUsageOutputSerializer,
)
from metering.selectors import usage_for_key
from metering.serializers import UsageQuerySerializer
from timepoint_billing.errors import NotFound
from timepoint_billing.openapi import error_responses

USAGE_PARAMETERS = [
    OpenApiParameter("from", str, description="First UTC day, YYYY-MM-DD (default: 30 days ago)"),
    OpenApiParameter("to", str, description="Last UTC day, inclusive (default: today)"),
    OpenApiParameter("granularity", str, enum=["day", "month"], description="default: day"),
]


class KeyListCreateApi(LimitedMeteredApiView):
    @extend_schema(
        operation_id="keys_list",
        tags=["keys"],
        summary="List your API keys",
        responses={200: KeyOutputSerializer(many=True), **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        keys = selectors.key_list(user=request.user)  # type: ignore[arg-type]
        return Response(KeyOutputSerializer(keys, many=True).data)

    @extend_schema(
        operation_id="keys_create",
        tags=["keys"],
        summary="Create an API key (the secret is shown once)",
        description=(
            "The tier comes from your plan; `tier` or any other undeclared field is rejected. "
            "`mode: test` creates a `tp_test_` key: authenticated, limited and metered like a live "
            "key, never spends real credits."
        ),
        request=KeyCreateInputSerializer,
        responses={201: KeyCreatedOutputSerializer, **error_responses(400, 401, 409, 429)},
    )
    def post(self, request: Request) -> Response:
        serializer = KeyCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, raw = services.key_create(user=request.user, **serializer.validated_data)  # type: ignore[arg-type]
        output = KeyCreatedOutputSerializer(key, context={"raw_key": raw})
        return Response(output.data, status=status.HTTP_201_CREATED)


class KeyRevokeApi(LimitedMeteredApiView):
    @extend_schema(
        operation_id="keys_revoke",
        tags=["keys"],
        summary="Revoke an API key (idempotent)",
        request=None,
        responses={204: None, **error_responses(401, 404, 429)},
    )
    def delete(self, request: Request, key_id: int) -> Response:
        services.key_revoke(user=request.user, key_id=key_id)  # type: ignore[arg-type]
        return Response(status=status.HTTP_204_NO_CONTENT)


class KeyRollApi(LimitedMeteredApiView):
    @extend_schema(
        operation_id="keys_roll",
        tags=["keys"],
        summary="Roll an API key: a new key now, the old one stops after the grace period",
        request=KeyRollInputSerializer,
        responses={201: KeyCreatedOutputSerializer, **error_responses(400, 401, 404, 409, 429)},
    )
    def post(self, request: Request, key_id: int) -> Response:
        serializer = KeyRollInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, raw = services.key_roll(
            user=request.user,  # type: ignore[arg-type]
            key_id=key_id,
            grace_seconds=serializer.validated_data["grace_seconds"],
        )
        output = KeyCreatedOutputSerializer(key, context={"raw_key": raw})
        return Response(output.data, status=status.HTTP_201_CREATED)


class KeyUsageApi(LimitedMeteredApiView):
    @extend_schema(
        operation_id="keys_usage",
        tags=["keys"],
        summary="Usage of one key per period and endpoint (counts, errors, credits, p50/p95)",
        parameters=USAGE_PARAMETERS,
        responses={200: KeyUsageOutputSerializer, **error_responses(400, 401, 404, 429)},
    )
    def get(self, request: Request, key_id: int) -> Response:
        key = selectors.key_get(user=request.user, key_id=key_id)  # type: ignore[arg-type]
        if key is None:
            raise NotFound("No such API key.", code="key_not_found")
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params: dict[str, Any] = query.validated_data
        usage = usage_for_key(
            key_id=key.pk,
            start=params["from"],
            end=params["to"],
            granularity=params["granularity"],
        )
        return Response(
            KeyUsageOutputSerializer({"key_id": key.pk, "prefix": key.prefix, **usage}).data
        )
