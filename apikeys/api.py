"""Key endpoints: create, list, read, edit, revoke, roll, per-key usage. Owner only; other ids →
404. Every one needs the `keys` scope when called with an API key."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.scopes import Scope
from apikeys import selectors, services
from apikeys.drf import LimitedMeteredApiView
from apikeys.serializers import (
    KeyCreatedOutputSerializer,
    KeyCreateInputSerializer,
    KeyListQuerySerializer,
    KeyOutputSerializer,
    KeyRollInputSerializer,
    KeyUpdateInputSerializer,
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
    required_scope = Scope.KEYS

    @extend_schema(
        operation_id="keys_list",
        tags=["keys"],
        summary="List your API keys",
        description="Each key with its scopes, this month's spend against its budget "
        "(`budget`), and `expires_soon` (usable, stops within 7 days: roll it). "
        "`?expiring=soon` lists only those.",
        parameters=[KeyListQuerySerializer],
        responses={200: KeyOutputSerializer(many=True), **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        query = KeyListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        keys = selectors.key_list(
            user=request.user,  # type: ignore[arg-type]
            expiring_soon=query.validated_data.get("expiring") == "soon",
        )
        return Response(KeyOutputSerializer(keys, many=True).data)

    @extend_schema(
        operation_id="keys_create",
        tags=["keys"],
        summary="Create an API key (the secret is shown once)",
        description=(
            "The tier comes from your plan; `tier` or any other undeclared field is rejected. "
            "`mode: test` creates a `tp_test_` key: authenticated, limited and metered like a live "
            "key, never spends real credits. `scopes` default to read, generate and publish: "
            "`keys` and `billing` only when asked for, so a leaked key cannot mint keys or open "
            "billing. `monthly_credit_budget`, `expires_at`, `allowed_origins` and "
            "`allowed_cidrs` are optional."
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


class KeyDetailApi(LimitedMeteredApiView):
    required_scope = Scope.KEYS

    @extend_schema(
        operation_id="keys_retrieve",
        tags=["keys"],
        summary="One of your API keys",
        responses={200: KeyOutputSerializer, **error_responses(401, 404, 429)},
    )
    def get(self, request: Request, key_id: int) -> Response:
        key = selectors.key_get(user=request.user, key_id=key_id)  # type: ignore[arg-type]
        if key is None:
            raise NotFound("No such API key.", code="key_not_found")
        return Response(KeyOutputSerializer(key).data)

    @extend_schema(
        operation_id="keys_update",
        tags=["keys"],
        summary="Change a key's name, scopes, monthly budget, expiry, origins or networks",
        description="Only the fields sent change. Takes effect on this server at once and on "
        "every server within a few seconds (a new expiry: on every server at once). A budget "
        "lowered under this month's spend stops further generations; nothing spent is undone. "
        "The expiry of a revoked, expired or rolled key cannot change (409 `key_not_active`).",
        request=KeyUpdateInputSerializer,
        responses={200: KeyOutputSerializer, **error_responses(400, 401, 404, 409, 429)},
    )
    def patch(self, request: Request, key_id: int) -> Response:
        serializer = KeyUpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.key_update(
            user=request.user,  # type: ignore[arg-type]
            key_id=key_id,
            **serializer.validated_data,
        )
        key = selectors.key_get(user=request.user, key_id=key_id)  # type: ignore[arg-type]
        return Response(KeyOutputSerializer(key).data)

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
    required_scope = Scope.KEYS

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
    required_scope = Scope.KEYS

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
        body = {
            "key_id": key.pk,
            "prefix": key.prefix,
            "budget": selectors.key_budget(key),
            **usage,
        }
        return Response(KeyUsageOutputSerializer(body).data)
