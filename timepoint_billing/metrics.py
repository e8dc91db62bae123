"""Prometheus metrics for operators (issue 15): every family the gateway exposes, and `/metrics`.

Multiprocess mode: gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before a worker imports
prometheus_client, so each worker writes its counters to files there and a scrape, answered by
any one worker, adds up every worker's (`MultiProcessCollector`). Without the variable (the test
suite, `manage.py runserver`) the process's own registry is served.

The hot path pays one counter increment and one histogram observation per request (and one
observation per upstream call); nothing here holds a lock longer than a value update. The grant
queue and the unprocessed webhook backlog are read from the database at scrape time
(`DatabaseCollector`), so they are right whichever worker answers, and cost nothing in between.

`/metrics` answers only `Authorization: Bearer <METRICS_TOKEN>`; with METRICS_TOKEN unset it
answers 404 (the endpoint does not exist), in every environment.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from timepoint_billing.errors import error_response

# Request latency: the API answers in milliseconds, a generation takes minutes.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 320)

# --- Requests (timepoint_billing/middleware.py)
# `route` is the URL pattern that matched (`api/v1/keys/<int:key_id>`), never the raw path, so
# the number of series is bounded by the URLconf; unmatched paths share `route="unmatched"`.
HTTP_REQUESTS = Counter(
    "tpb_http_requests",
    "Requests answered, by route pattern, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "tpb_http_request_duration_seconds",
    "Time to answer (to the first byte of a streamed answer), by route pattern and status.",
    ["route", "status"],
    buckets=_LATENCY_BUCKETS,
)

# --- Upstreams (upstreams/http.py)
UPSTREAM_LATENCY = Histogram(
    "tpb_upstream_request_duration_seconds",
    "Time from sending a call to an upstream to its response headers, by upstream.",
    ["upstream"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "tpb_upstream_errors",
    "Upstream calls that failed: kind=timeout|pool_timeout|transport (no answer) or "
    "status_5xx (answered with a server error).",
    ["upstream", "kind"],
)

# --- Limiter (apikeys/limits.py)
LIMITER_DECISIONS = Counter(
    "tpb_limiter_decisions",
    "Rate-limiter decisions: admitted, refused (a window or the concurrency cap), invalid_key, "
    "failed_open (Redis down, a read served unlimited), failed_closed (Redis down, a spending "
    "call refused), busy (Redis too slow, refused).",
    ["decision"],
)

# --- Usage buffer (metering/services.py)
USAGE_BUFFER = Gauge(
    "tpb_usage_buffer_records",
    "Usage records queued in memory, not yet written (summed over live workers; updated at "
    "every flush interval).",
    multiprocess_mode="livesum",
)
USAGE_FLUSH_LAG = Histogram(
    "tpb_usage_flush_lag_seconds",
    "Age of the oldest record of each written batch: how far the usage table lags behind.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)

# --- Webhooks (payments/stripe_events.py, payments/apple.py)
WEBHOOK_LAG = Histogram(
    "tpb_webhook_lag_seconds",
    "Webhook delay by provider and stage: received = from the provider creating the event to "
    "it being stored here; processed = from stored to its work done (Stripe's mirror/plan work).",
    ["provider", "stage"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400),
)
# Series exist (at 0) before the first event, so `rate()` and alerts see them from the start.
for _provider, _stage in (("stripe", "received"), ("stripe", "processed"), ("apple", "received")):
    WEBHOOK_LAG.labels(_provider, _stage)


class DatabaseCollector:
    """The grant queue and the webhook backlog, read from the database at scrape time."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from django.db.models import Count, Min

        from payments.models import CreditGrant, EventState, GrantState, StripeWebhookEvent

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
    from django.db.models import Count, Min

    from webhooks.models import DeliveryState, WebhookDelivery

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


def route_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return str(match.route)
    if settings.STATIC_URL and request.path.startswith(str(settings.STATIC_URL)):
        return "static"  # answered by WhiteNoise before URL resolution
    return "unmatched"


def observe_request(request: HttpRequest, status: int, seconds: float) -> None:
    route = route_of(request)
    code = str(status)
    HTTP_REQUESTS.labels(route, request.method or "", code).inc()
    HTTP_LATENCY.labels(route, code).observe(seconds)
