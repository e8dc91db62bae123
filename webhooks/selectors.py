"""Reads of webhook endpoints, deliveries and their attempts for the API, the portal and the
admin."""

from __future__ import annotations

from django.db.models import Count, Prefetch, Q, QuerySet

from accounts.models import User
from webhooks.models import DeliveryState, WebhookAttempt, WebhookDelivery, WebhookEndpoint

RECENT_ATTEMPTS = 10


def endpoint_list(*, user: User) -> QuerySet[WebhookEndpoint]:
    """The user's endpoints, newest first, each with `queued` (deliveries waiting for a first
    or next attempt) and `failed` (deliveries whose retry window ended without a 2xx)."""
    return WebhookEndpoint.objects.filter(user=user).annotate(
        queued=Count(
            "deliveries",
            filter=Q(
                deliveries__state__in=[
                    DeliveryState.PENDING,
                    DeliveryState.SENDING,
                    DeliveryState.RETRYING,
                ]
            ),
        ),
        failed=Count("deliveries", filter=Q(deliveries__state=DeliveryState.FAILED)),
    )


def endpoint_get(*, user: User, endpoint_id: str) -> WebhookEndpoint | None:
    return endpoint_list(user=user).filter(public_id=endpoint_id).first()


def _with_attempts(deliveries: QuerySet[WebhookDelivery]) -> QuerySet[WebhookDelivery]:
    return deliveries.select_related("event", "endpoint").prefetch_related(
        Prefetch(
            "attempt_log",
            queryset=WebhookAttempt.objects.order_by("-number"),
            to_attr="recent_attempts",
        )
    )


def delivery_list(
    *, user: User, endpoint_id: str | None = None, state: str | None = None, limit: int = 50
) -> list[WebhookDelivery]:
    """The user's deliveries, newest first (optionally one endpoint's, or in one state), each
    with `recent_attempts` (its last attempts, newest first)."""
    deliveries = WebhookDelivery.objects.filter(endpoint__user=user)
    if endpoint_id is not None:
        deliveries = deliveries.filter(endpoint__public_id=endpoint_id)
    if state:
        deliveries = deliveries.filter(state=state)
    rows = list(_with_attempts(deliveries.order_by("-created_at", "-id"))[:limit])
    for row in rows:
        row.recent_attempts = row.recent_attempts[:RECENT_ATTEMPTS]  # type: ignore[attr-defined]
    return rows


def delivery_get(*, user: User, delivery_id: str) -> WebhookDelivery | None:
    """One of the user's deliveries with `recent_attempts` (every attempt, newest first)."""
    return _with_attempts(
        WebhookDelivery.objects.filter(endpoint__user=user, public_id=delivery_id)
    ).first()
