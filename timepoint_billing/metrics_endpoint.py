"""The `/metrics` endpoint (behind METRICS_TOKEN): this process's or every worker's series
(multiprocess mode, `timepoint_billing.metrics`), plus the queues and backlogs read from the
database at scrape time (grants, Stripe events, webhooks to developers)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from payments.models import CreditGrant, EventState, GrantState, StripeWebhookEvent
from timepoint_billing.errors import error_response
from webhooks.models import DeliveryState, WebhookDelivery


class DatabaseCollector:
    """The grant queue and the webhook backlog, read from the database at scrape time."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        counts = dict(
            CreditGrant.objects.filter(
                state__in=[GrantState.PENDING, GrantState.SENDING, GrantState.FAILED]
            )
            .values_list("state")
            .annotate(n=Count("id"))
            .values_list("state", "n")
        )
        grants = GaugeMetricFamily(
            "tpb_grants", "Credit grants not yet applied in Flash, by state.", labels=["state"]
        )
        for state in (GrantState.PENDING, GrantState.SENDING, GrantState.FAILED):
            grants.add_metric([str(state)], counts.get(state, 0))
        yield grants
        oldest = CreditGrant.objects.filter(
            state__in=[GrantState.PENDING, GrantState.SENDING, GrantState.FAILED]
        ).aggregate(oldest=Min("created_at"))["oldest"]
        yield GaugeMetricFamily(
            "tpb_grant_oldest_pending_age_seconds",
            "Age of the oldest grant not yet applied (pending, sending or failed); 0 when none.",
            value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )
        needs_attention = CreditGrant.objects.filter(state=GrantState.NEEDS_ATTENTION).count()
        yield GaugeMetricFamily(
            "tpb_grants_needs_attention",
            "Grants that will not be retried automatically: staff must decide.",
            value=needs_attention,
        )
        backlog = StripeWebhookEvent.objects.filter(state=EventState.RECEIVED).aggregate(
            n=Count("id"), oldest=Min("received_at")
        )
        unprocessed = GaugeMetricFamily(
            "tpb_webhook_unprocessed_oldest_age_seconds",
            "Age of the oldest stored webhook whose work is not done yet; 0 when none.",
            labels=["provider"],
        )
        age = (now - backlog["oldest"]).total_seconds() if backlog["oldest"] else 0.0
        unprocessed.add_metric(["stripe"], max(0.0, age))
        yield unprocessed
        yield from _outgoing_webhooks(now)


def _outgoing_webhooks(now: datetime) -> Iterator[Metric]:
    """Webhooks to developers waiting in their outbox, and how late the most overdue one is (a
    stopped or swamped worker shows here; a developer's failing endpoint shows as `retrying`)."""
    waiting = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.RETRYING)
    counts = dict(
        WebhookDelivery.objects.filter(state__in=waiting)
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    family = GaugeMetricFamily(
        "tpb_outgoing_webhooks",
        "Webhook deliveries to developers not yet done, by state.",
        labels=["state"],
    )
    for state in waiting:
        family.add_metric([str(state)], counts.get(state, 0))
    yield family
    overdue = WebhookDelivery.objects.filter(
        state__in=(DeliveryState.PENDING, DeliveryState.RETRYING), next_attempt_at__lte=now
    ).aggregate(oldest=Min("next_attempt_at"))["oldest"]
    yield GaugeMetricFamily(
        "tpb_outgoing_webhook_overdue_seconds",
        "How long the most overdue webhook delivery has been due without an attempt; 0 when none.",
        value=max(0.0, (now - overdue).total_seconds()) if overdue else 0.0,
    )


class _ThisProcess:
    """The process's own registry, when not in multiprocess mode."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition() -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(DatabaseCollector())
    return generate_latest(registry)


def _authorised(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = settings.METRICS_TOKEN
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.encode()
    )


@csrf_exempt
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not settings.METRICS_TOKEN:
        return error_response(404, "Not found.", "not_found")
    if not _authorised(request):
        response = error_response(
            401, "The metrics endpoint needs its bearer token.", "not_authenticated"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if request.method not in ("GET", "HEAD"):
        response = error_response(405, "Method not allowed.", "method_not_allowed")
        response["Allow"] = "GET, HEAD"
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
