"""Usage records: buffered, written exactly once, rolled up into aggregates the endpoints serve."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from metering import services
from metering.models import UsageDaily, UsageMonthly, UsageRecord

pytestmark = pytest.mark.django_db


def _record(user_id: int | None, key_id: int | None, n: int, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "request_id": f"req-{uuid.uuid4().hex}",
        "user_id": user_id,
        "api_key_id": key_id,
        "endpoint": "/api/v1/moments",
        "method": "GET",
        "status": 200,
        "credits_spent": 0,
        "response_time_ms": float(n % 100),
    }
    fields.update(overrides)
    services.record_usage(**fields)


def test_thousand_records_written_exactly_once_even_after_a_crashed_flush(
    user: Any, make_key: Any
) -> None:
    key, _ = make_key(user)

    def burst(offset: int) -> None:
        for n in range(offset, offset + 250):
            _record(user.pk, key.pk, n, status=500 if n % 50 == 0 else 200)

    threads = [threading.Thread(target=burst, args=(i * 250,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert services.pending_usage_count() == 1000
    assert UsageRecord.objects.count() == 0  # nothing on the request path

    # A flush that committed its first batch and then died before dropping it from the buffer:
    first_batch = list(services._buffer)[:300]
    services.usage_write_batch(first_batch)
    assert UsageRecord.objects.count() == 300
    # The retry writes everything; the 300 already stored are not counted twice.
    assert services.flush_usage() == 1000
    assert services.flush_usage() == 0
    assert UsageRecord.objects.count() == 1000
    assert UsageRecord.objects.filter(status=500).count() == 20


def test_full_buffer_flushes_instead_of_dropping(user: Any, settings: Any) -> None:
    settings.METERING_BUFFER_MAX = 100
    for n in range(250):
        _record(user.pk, None, n)
        assert services.pending_usage_count() < 100
    services.flush_usage()
    assert UsageRecord.objects.count() == 250


def test_drf_calls_are_metered_with_the_route_pattern(
    client: Client, user: Any, make_key: Any
) -> None:
    key, raw = make_key(user)
    client.get("/api/v1/keys", HTTP_X_API_KEY=raw, HTTP_X_REQUEST_ID="req-abcdef-123")
    client.get(f"/api/v1/keys/{key.pk}/usage", HTTP_X_API_KEY=raw)
    client.delete("/api/v1/keys/424242", HTTP_X_API_KEY=raw)
    services.flush_usage()
    rows = {(r.endpoint, r.method, r.status) for r in UsageRecord.objects.all()}
    assert rows == {
        ("/api/v1/keys", "GET", 200),
        ("/api/v1/keys/<int:key_id>/usage", "GET", 200),
        ("/api/v1/keys/<int:key_id>", "DELETE", 404),
    }
    record = UsageRecord.objects.get(endpoint="/api/v1/keys")
    assert record.user_id == user.pk and record.api_key_id == key.pk
    assert record.response_time_ms > 0
    # The client's X-Request-ID is a correlation id only, never the record's unique key: the
    # same value sent again must not turn the next record into a dropped "duplicate".
    assert record.request_id != "req-abcdef-123"
    client.get("/api/v1/keys", HTTP_X_API_KEY=raw, HTTP_X_REQUEST_ID="req-abcdef-123")
    services.flush_usage()
    assert UsageRecord.objects.filter(endpoint="/api/v1/keys").count() == 2


def test_records_survive_account_deletion(user: Any) -> None:
    _record(user.pk, None, 1)
    services.flush_usage()
    user.delete()
    assert UsageRecord.objects.get().user_id is None


def test_rollup_is_idempotent_and_agrees_with_records(
    client: Client, auth_headers: dict[str, Any], user: Any, make_key: Any
) -> None:
    key, _ = make_key(user)
    other_key, _ = make_key(user, name="second")
    yesterday = datetime.now(UTC) - timedelta(days=1)
    for n in range(1, 101):  # yesterday: 100 calls on key, latencies 1..100 ms, 5 errors
        _record(
            user.pk,
            key.pk,
            n,
            response_time_ms=float(n),
            status=502 if n <= 5 else 200,
            credits_spent=2 if n % 10 == 0 else 0,
            endpoint="/api/v1/generate",
            method="POST",
        )
    for n in range(30):  # today: other key and a session call
        _record(user.pk, other_key.pk if n < 20 else None, n)
    services.flush_usage()
    UsageRecord.objects.filter(endpoint="/api/v1/generate").update(created_at=yesterday)

    call_command("rollup_usage")
    call_command("rollup_usage")  # re-running recomputes; nothing doubles
    daily = UsageDaily.objects.get(api_key=key, day=yesterday.date())
    assert (daily.requests, daily.errors, daily.credits_spent) == (100, 5, 20)
    assert (daily.p50_ms, daily.p95_ms) == (50.0, 95.0)
    assert sum(row.requests for row in UsageDaily.objects.all()) == UsageRecord.objects.count()
    assert sum(row.requests for row in UsageMonthly.objects.all()) == 130
    month_rows = UsageMonthly.objects.filter(api_key=key)
    assert sum(row.requests for row in month_rows) == 100

    start = (yesterday - timedelta(days=1)).date().isoformat()
    usage = client.get(f"/api/v1/usage?from={start}", **auth_headers).json()
    assert usage["totals"] == {"requests": 130, "errors": 5, "credits_spent": 20}
    assert [p["requests"] for p in usage["periods"]] == [100, 30]
    by_key = {row["api_key_id"]: row["requests"] for row in usage["by_key"]}
    assert by_key == {key.pk: 100, other_key.pk: 20, None: 10}
    by_endpoint = {(r["endpoint"], r["method"]): r["credits_spent"] for r in usage["by_endpoint"]}
    assert by_endpoint == {("/api/v1/generate", "POST"): 20, ("/api/v1/moments", "GET"): 0}

    key_usage = client.get(f"/api/v1/keys/{key.pk}/usage?from={start}", **auth_headers).json()
    assert key_usage["totals"] == {"requests": 100, "errors": 5, "credits_spent": 20}
    [row] = key_usage["rows"]
    assert row["endpoint"] == "/api/v1/generate" and row["p95_ms"] == 95.0

    monthly = client.get(
        f"/api/v1/keys/{key.pk}/usage?from={start}&granularity=month", **auth_headers
    ).json()
    assert monthly["totals"]["requests"] == 100


def test_usage_query_is_validated(client: Client, auth_headers: dict[str, Any]) -> None:
    bad = client.get("/api/v1/usage?from=2026-02-01&to=2026-01-01", **auth_headers)
    assert bad.status_code == 400
    assert client.get("/api/v1/usage?granularity=week", **auth_headers).status_code == 400
    assert client.get("/api/v1/usage", **auth_headers).status_code == 200


@pytest.mark.django_db
def test_the_background_worker_keeps_todays_aggregates_fresh() -> None:
    for n in range(3):
        services.record_usage(
            request_id=f"fresh-{n}",
            user_id=None,
            api_key_id=None,
            endpoint="/api/v1/browse",
            method="GET",
            status=200 if n else 500,
            credits_spent=0,
            response_time_ms=2.0,
        )
    services.flush_usage()
    call_command("run_grants", "--once")
    row = UsageDaily.objects.get(endpoint="/api/v1/browse")
    assert (row.requests, row.errors) == (3, 1)
