"""PostgreSQL "restarted" mid-run: every connection the gateway holds is terminated from another
session (what a restart or a failover does to them). Requests keep working without a gateway
restart — connections are health-checked before reuse — and no usage record is lost: the flusher
retries what it could not write."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.db import connection

from tests.reliability.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Every call is metered (account views too, since 1a7f03a).
METERED = [
    "/api/v1/credits/balance",
    "/api/v1/moments",
    "/api/v1/keys",
    "/api/v1/usage",
    "/api/v1/auth/me",
]
CALLS = METERED


def _terminate_gateway_connections() -> int:
    import psycopg

    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
        autocommit=True,
    ) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    connection.close()  # this test's own connection was one of them
    return len(rows)


def _round(gateway: httpx.Client, auth: dict[str, str]) -> list[httpx.Response]:
    answers = [gateway.get(path, headers=auth) for path in CALLS]
    for path, response in zip(CALLS, answers, strict=True):
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return answers


def test_requests_and_usage_survive_a_database_restart(
    gateway: httpx.Client, auth: dict[str, str], settings: Any, user: Any
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("simulates a PostgreSQL restart (pg_terminate_backend); runs on PostgreSQL")
    from metering.models import UsageRecord

    settings.METERING_BACKGROUND_FLUSH = True
    settings.METERING_FLUSH_INTERVAL_SECONDS = 0.2
    sent = 0
    for _ in range(3):  # warm: persistent connections in the gateway's threads and the flusher
        _round(gateway, auth)
        sent += len(METERED)
    wait_for(lambda: UsageRecord.objects.count() == sent, timeout=5)
    connection.close()

    for _ in range(3):
        assert _terminate_gateway_connections() >= 1
        _round(gateway, auth)
        sent += len(METERED)
    # Records queued while the flusher's own connection was dead are retried, none lost or doubled.
    wait_for(lambda: UsageRecord.objects.count() == sent, timeout=10, interval=0.2)
    assert UsageRecord.objects.filter(status__gte=500).count() == 0
