"""`/metrics` (issue 15): bearer token required; every family exposed; the exposition passes
Debian's `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY

TOKEN = "metrics-test-token-0123456789"
FAMILIES = (
    "tpb_http_requests_total",
    "tpb_http_request_duration_seconds",
    "tpb_upstream_request_duration_seconds",
    "tpb_upstream_errors_total",
    "tpb_limiter_decisions_total",
    "tpb_usage_buffer_records",
    "tpb_usage_flush_lag_seconds",
    "tpb_grants",
    "tpb_grant_oldest_pending_age_seconds",
    "tpb_grants_needs_attention",
    "tpb_webhook_lag_seconds",
    "tpb_webhook_unprocessed_oldest_age_seconds",
    "tpb_outgoing_webhooks",
    "tpb_outgoing_webhook_overdue_seconds",
)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db
def test_metrics_need_the_bearer_token(client: Client, settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    # Unset: the endpoint does not exist, even with a guess at a token.
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404
    settings.METRICS_TOKEN = TOKEN
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.json()["code"] == "not_authenticated"
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405
    ok = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert ok.status_code == 200
    assert ok["Content-Type"].startswith("text/plain")
    assert b"tpb_http_requests_total" in ok.content


@pytest.mark.django_db(transaction=True)
def test_every_family_is_exposed_and_promtool_accepts_it(
    client: Client, settings: Any, user: Any, make_key: Any, clockchain_peer: Any
) -> None:
    from metering.services import flush_usage
    from payments.models import CreditGrant

    settings.METRICS_TOKEN = TOKEN
    settings.METERING_BACKGROUND_FLUSH = False
    route = "api/v1/moments/<path:path>"
    before_requests = _value(
        "tpb_http_requests_total", route=route, method="GET", status="200"
    ) + _value("tpb_http_requests_total", route=route, method="GET", status="404")
    before_upstream = _value("tpb_upstream_request_duration_seconds_count", upstream="clockchain")
    before_admitted = _value("tpb_limiter_decisions_total", decision="admitted")
    before_refused = _value("tpb_limiter_decisions_total", decision="refused")
    before_errors = _value("tpb_upstream_errors_total", upstream="clockchain", kind="transport")
    before_flushes = _value("tpb_usage_flush_lag_seconds_count")

    _, raw = make_key(user, rate_limit_per_minute=2)
    auth = {"Authorization": f"Bearer {raw}"}
    for name in ("1969/07/20/moon-landing", "1989/11/09/berlin-wall"):
        answer = client.get(f"/api/v1/moments/{name}", headers=auth)
        assert answer.status_code in (200, 404), answer.content
    assert client.get("/api/v1/moments/x", headers=auth).status_code == 429  # the third in a minute
    flush_usage()

    # Clockchain unreachable: a transport error, counted per upstream.
    settings.CLOCKCHAIN_URL = "http://127.0.0.1:9"
    _, other = make_key(user, name="second")
    assert client.get("/api/v1/stats", HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 502

    old = timezone.now() - timedelta(minutes=30)
    CreditGrant.objects.create(
        key="stripe:metrics-1",
        user=user,
        flash_user_id=user.flash_user_id,
        amount=10,
        transaction_type="purchase",
        description="[grant:stripe:metrics-1] 10 credits",
        source="stripe",
        state="pending",
        created_at=old,
    )

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    text = response.content.decode()
    for family in FAMILIES:
        assert f"# TYPE {family} " in text, family
    # Route patterns, never raw paths.
    assert "1969/07/20" not in text
    after_requests = _value(
        "tpb_http_requests_total", route=route, method="GET", status="200"
    ) + _value("tpb_http_requests_total", route=route, method="GET", status="404")
    assert after_requests - before_requests == 2
    assert _value("tpb_http_requests_total", route=route, method="GET", status="429") >= 1
    after_upstream = _value("tpb_upstream_request_duration_seconds_count", upstream="clockchain")
    assert after_upstream - before_upstream >= 2
    assert _value("tpb_limiter_decisions_total", decision="admitted") - before_admitted >= 3
    assert _value("tpb_limiter_decisions_total", decision="refused") - before_refused == 1
    assert (
        _value("tpb_upstream_errors_total", upstream="clockchain", kind="transport") - before_errors
        == 1
    )
    assert _value("tpb_usage_flush_lag_seconds_count") - before_flushes >= 1
    assert 'tpb_grants{state="pending"} 1.0' in text
    age = next(
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("tpb_grant_oldest_pending_age_seconds ")
    )
    assert 29 * 60 <= age <= 40 * 60

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=response.content, capture_output=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
