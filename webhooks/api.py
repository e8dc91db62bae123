"""Webhook endpoints: register, list, read, change, rotate the secret, delete; each endpoint's
deliveries with their last attempts, and resend. Owner only (other ids → 404). An API key needs
the `keys` scope (account administration), as for managing keys."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiCallback, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.scopes import Scope
from apikeys.drf import LimitedMeteredApiView
from timepoint_billing.errors import NotFound
from timepoint_billing.openapi import error_responses
from webhooks import outbox, selectors, services
from webhooks.models import EventType
from webhooks.serializers import (
    DeliveryListQuerySerializer,
    DeliveryOutputSerializer,
    EndpointCreatedOutputSerializer,
    EndpointCreateInputSerializer,
    EndpointOutputSerializer,
    EndpointUpdateInputSerializer,
    SecretRotateInputSerializer,
    event_body_serializer,
)

TAG = "webhooks"
CALLBACKS = [
    OpenApiCallback(
        name=event_type,
        path="{$request.body#/url}",
        decorator=extend_schema(
            summary=f"{event_type}: {label.lower()}",
            description="POSTed to the endpoint as JSON, signed (`Timepoint-Signature`). Answer "
            "any 2xx within 10 s; anything else (a redirect, an error, a timeout) is retried "
            "with exponential backoff for 3 days, with the same `Timepoint-Delivery-Id`.",
            request=event_body_serializer(event_type),
            responses={200: OpenApiResponse(description="Any 2xx: received.")},
        ),
    )
    for event_type, label in EventType.choices
]


def _with_secret(endpoint: object, secret: str, status_code: int) -> Response:
    """The one kind of answer that carries a signing secret: no browser or proxy may keep it."""
    output = EndpointCreatedOutputSerializer(endpoint, context={"secret": secret})
    return Response(output.data, status=status_code, headers={"Cache-Control": "no-store"})


def _endpoint_or_404(request: Request, endpoint_id: str) -> Response:
    endpoint = selectors.endpoint_get(user=request.user, endpoint_id=endpoint_id)  # type: ignore[arg-type]
    if endpoint is None:
        raise NotFound("No such webhook endpoint.", code="webhook_endpoint_not_found")
    return Response(EndpointOutputSerializer(endpoint).data)


class EndpointListCreateApi(LimitedMeteredApiView):
    required_scope = Scope.KEYS

    @extend_schema(
        operation_id="webhook_endpoints_list",
        tags=[TAG],
        summary="List your webhook endpoints",
        responses={200: EndpointOutputSerializer(many=True), **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        endpoints = selectors.endpoint_list(user=request.user)  # type: ignore[arg-type]
        return Response(EndpointOutputSerializer(endpoints, many=True).data)

    @extend_schema(
        operation_id="webhook_endpoints_create",
        tags=[TAG],
        summary="Register a webhook endpoint (its signing secret is shown once)",
        description="Events are POSTed to `url` as they happen, signed like Stripe's webhooks "
        "(see the callbacks for each body and the headers). A URL on a private, loopback or "
        "link-local address is 400 `webhook_url_not_allowed`; at most 16 endpoints (409 "
        "`webhook_endpoint_limit`).",
        request=EndpointCreateInputSerializer,
        responses={201: EndpointCreatedOutputSerializer, **error_responses(400, 401, 409, 429)},
        callbacks=CALLBACKS,
    )
    def post(self, request: Request) -> Response:
        serializer = EndpointCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint, secret = services.endpoint_create(user=request.user, **serializer.validated_data)  # type: ignore[arg-type]
        return _with_secret(endpoint, secret, status.HTTP_201_CREATED)


class EndpointDetailApi(LimitedMeteredApiView):
    required_scope = Scope.KEYS

    @extend_schema(
        operation_id="webhook_endpoints_retrieve",
        tags=[TAG],
        summary="One of your webhook endpoints",
        responses={200: EndpointOutputSerializer, **error_responses(401, 404, 429)},
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        return _endpoint_or_404(request, endpoint_id)

    @extend_schema(
        operation_id="webhook_endpoints_update",
        tags=[TAG],
        summary="Change an endpoint's URL, events, description, or turn it off and on",
        request=EndpointUpdateInputSerializer,
        responses={200: EndpointOutputSerializer, **error_responses(400, 401, 404, 429)},
    )
    def patch(self, request: Request, endpoint_id: str) -> Response:
        serializer = EndpointUpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.endpoint_update(
            user=request.user,  # type: ignore[arg-type]
            endpoint_id=endpoint_id,
            **serializer.validated_data,
        )
        return _endpoint_or_404(request, endpoint_id)

    @extend_schema(
        operation_id="webhook_endpoints_delete",
        tags=[TAG],
        summary="Delete a webhook endpoint (nothing more is sent to it)",
        request=None,
        responses={204: None, **error_responses(401, 404, 429)},
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        services.endpoint_delete(user=request.user, endpoint_id=endpoint_id)  # type: ignore[arg-type]
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndpointSecretRotateApi(LimitedMeteredApiView):
    required_scope = Scope.KEYS

    @extend_schema(
        operation_id="webhook_endpoints_rotate_secret",
        tags=[TAG],
        summary="Rotate an endpoint's signing secret (the new one is shown once)",
        description="During `overlap_seconds` every delivery carries two `v1` signatures, the "
        "new secret's first, so your receiver can switch at its own pace.",
        request=SecretRotateInputSerializer,
        responses={200: EndpointCreatedOutputSerializer, **error_responses(400, 401, 404, 429)},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        serializer = SecretRotateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint, secret = services.endpoint_secret_rotate(
            user=request.user,  # type: ignore[arg-type]
            endpoint_id=endpoint_id,
            overlap_seconds=serializer.validated_data["overlap_seconds"],
        )
        return _with_secret(endpoint, secret, status.HTTP_200_OK)


class EndpointDeliveryListApi(LimitedMeteredApiView):
    required_scope = Scope.KEYS

    @extend_schema(
        operation_id="webhook_deliveries_list",
        tags=[TAG],
        summary="An endpoint's deliveries, newest first, with their last attempts",
        parameters=[DeliveryListQuerySerializer],
        responses={200: DeliveryOutputSerializer(many=True), **error_responses(400, 401, 404, 429)},
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        if selectors.endpoint_get(user=request.user, endpoint_id=endpoint_id) is None:  # type: ignore[arg-type]
            raise NotFound("No such webhook endpoint.", code="webhook_endpoint_not_found")
        query = DeliveryListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deliveries = selectors.delivery_list(
            user=request.user,  # type: ignore[arg-type]
            endpoint_id=endpoint_id,
            state=query.validated_data.get("state"),
            limit=query.validated_data["limit"],
        )
        return Response(DeliveryOutputSerializer(deliveries, many=True).data)


class DeliveryResendApi(LimitedMeteredApiView):
    required_scope = Scope.KEYS

    @extend_schema(
        operation_id="webhook_deliveries_resend",
        tags=[TAG],
        summary="Send a delivery again now (same delivery id, a new 3-day retry window)",
        request=None,
        responses={202: DeliveryOutputSerializer, **error_responses(401, 404, 409, 429)},
    )
    def post(self, request: Request, delivery_id: str) -> Response:
        outbox.delivery_resend(user=request.user, delivery_id=delivery_id)  # type: ignore[arg-type]
        delivery = selectors.delivery_get(user=request.user, delivery_id=delivery_id)  # type: ignore[arg-type]
        return Response(DeliveryOutputSerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
