"""Prometheus metrics for operators (issue 15): every family the gateway exposes (the endpoint:
`timepoint_billing/metrics_endpoint.py`).

Multiprocess mode: gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before a worker imports
prometheus_client, so each worker writes its counters to files there and a scrape, answered by
any one worker, adds up every worker's (`MultiProcessCollector`). Without the variable (the test
suite, `manage.py runserver`) the process's own registry is served.

The hot path pays one counter increment and one histogram observation per request (and one
observation per upstream call); nothing here holds a lock longer than a value update. The grant
queue and the unprocessed webhook backlog are read from the database at scrape time
(`metrics_endpoint.DatabaseCollector`), so they are right whichever worker answers, and cost
nothing in between.

`/metrics` answers only `Authorization: Bearer <METRICS_TOKEN>`; with METRICS_TOKEN unset it
answers 404 (the endpoint does not exist), in every environment.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.http import HttpRequest
from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    values,
)

# In multiprocess mode every value update asks `os.getpid()` whether the process has forked since
# (a system call each: ~27 per relayed request, strace). The library takes the function that
# names the process (`MultiProcessValue(process_identifier=...)`, as its documentation does for
# uWSGI); this one reads the id kept here, which a forked child renews. Set before any metric
# below is built, as the library requires.
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


def _process_id() -> int:
    return _pid


os.register_at_fork(after_in_child=_renew_pid)
if values.ValueClass is not values.MutexValue:
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)

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
