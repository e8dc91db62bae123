"""Spend controls on API keys through the production server (gunicorn + GatewayUvicornWorker,
2 workers) on PostgreSQL + Redis, in front of the contract peers (issue 18).

- Parallel generations on one key with a monthly budget never pass it: the budget hold takes the
  key row lock in PostgreSQL, so requests on both workers queue on it; exactly as many succeed as
  the budget covers, the rest are 402 `budget_exhausted` and never reach Flash.
- Scopes, expiry and origin/address lists hold on every worker; the client address a CIDR list is
  checked against is the one the server trusts (X-Forwarded-For only from FORWARDED_ALLOW_IPS).

Needs PostgreSQL (both workers and the test share the database) and Redis; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from apikeys.models import KeySpend

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql" or not django_settings.REDIS_URL,
        reason="needs DATABASE_URL (PostgreSQL: two gateway workers and the test share it) and "
        "REDIS_URL (the limiter and the credit reservations both workers share)",
    ),
]

GENERATE = "/api/v1/generate"
HYPER = {"query": "The fall of Rome", "preset": "hyper"}  # 5 credits on the peer
PARALLEL = 16


@pytest.fixture
def start_gateway(production_gateway: Any, flash_peer: Any, clockchain_peer: Any) -> Any:
    def start(**env: str) -> Any:
        return production_gateway(
            {
                "REDIS_URL": django_settings.REDIS_URL,
                "REDIS_SOCKET_TIMEOUT": "2",
                "REDIS_CONNECT_TIMEOUT": "1",
                "UPSTREAM_POOL_TIMEOUT": "20",
                **env,
            }
        )

    return start


async def _parallel_generations(url: str, raw: str, count: int) -> list[httpx.Response]:
    # One connection per request, so the kernel spreads them over both workers' accept queues.
    async def one() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
            return await client.post(GENERATE, json=HYPER, headers={"X-API-Key": raw})

    return list(await asyncio.gather(*(one() for _ in range(count))))


def test_parallel_generations_on_two_workers_never_pass_the_key_budget(
    start_gateway: Any, flash_peer: Any, make_key: Any, user: Any
) -> None:
    flash_peer.set_balance(user.flash_user_id, 1_000)
    flash_peer.lost_updates = False  # Flash's own race (pitfall 11) is not what this test is about
    flash_peer.generation_delay = 0.3  # the admitted ones are still running while others arrive
    key, raw = make_key(
        user,
        monthly_credit_budget=12,  # two 5-credit generations fit, a third does not
        rate_limit_per_minute=1_000,
        rate_limit_per_day=10_000,
        concurrency_limit=100,
    )
    gateway = start_gateway()
    flash_peer.reset_requests()

    responses = asyncio.run(_parallel_generations(gateway.url, raw, PARALLEL))

    outcomes = Counter(
        (r.status_code, r.json().get("code") if r.status_code != 200 else "ok") for r in responses
    )
    print(f"\n{PARALLEL} parallel generations, budget 12 at 5 each: {dict(outcomes)}")
    assert outcomes == {(200, "ok"): 2, (402, "budget_exhausted"): PARALLEL - 2}, gateway.log_tail()
    sent = flash_peer.requests_to("/api/v1/timepoints/generate")
    assert len(sent) == 2
    spent = KeySpend.objects.filter(api_key=key, refunded_at__isnull=True).aggregate(
        total=Sum("amount")
    )
    assert spent["total"] == 10
    assert flash_peer.user_balance(user.flash_user_id) == 990
    assert len(gateway.worker_pids()) == 2


def test_scopes_expiry_and_origins_hold_on_the_production_server(
    start_gateway: Any, flash_peer: Any, make_key: Any, user: Any
) -> None:
    reader_key, reader = make_key(user, name="reader", scopes=["read"])
    _, browser_only = make_key(user, name="web", allowed_origins=["https://app.example.com"])
    _, office_only = make_key(user, name="office", allowed_cidrs=["203.0.113.0/24"])
    gateway = start_gateway()  # FORWARDED_ALLOW_IPS: 127.0.0.1, the default (a local proxy)
    # Made after the start (slow on a busy machine); the server reads the shared database.
    expires = timezone.now() + timedelta(seconds=5)
    _, expiring = make_key(user, name="expiring", expires_at=expires)
    flash_peer.reset_requests()

    with httpx.Client(base_url=gateway.url, timeout=20, trust_env=False) as client:
        # Several calls each, so both workers answer.
        for _ in range(4):
            refused = client.post(GENERATE, json=HYPER, headers={"X-API-Key": reader})
            assert refused.status_code == 403, refused.text
            assert refused.json() == {
                "detail": refused.json()["detail"],
                "code": "scope_required",
                "scope": "generate",
            }
            assert client.get("/api/v1/browse", headers={"X-API-Key": reader}).status_code == 200
            assert client.get("/api/v1/browse", headers={"X-API-Key": expiring}).status_code == 200

            wrong_site = {"X-API-Key": browser_only, "Origin": "https://evil.example.com"}
            response = client.get("/api/v1/browse", headers=wrong_site)
            assert (response.status_code, response.json()["code"]) == (403, "key_not_allowed_here")
            right_site = {"X-API-Key": browser_only, "Origin": "https://app.example.com"}
            assert client.get("/api/v1/browse", headers=right_site).status_code == 200

            # The connection comes from 127.0.0.1, a trusted proxy here: its X-Forwarded-For
            # is the client address the list is checked against.
            direct = client.get("/api/v1/browse", headers={"X-API-Key": office_only})
            assert (direct.status_code, direct.json()["code"]) == (403, "key_not_allowed_here")
            proxied = {"X-API-Key": office_only, "X-Forwarded-For": "203.0.113.7"}
            assert client.get("/api/v1/browse", headers=proxied).status_code == 200
        assert flash_peer.requests_to("/api/v1/timepoints/generate") == []
        assert flash_peer.requests_to("/api/v1/credits") == []

        # Expiry: both workers refuse the key once its time is up (the key cache included).
        time.sleep(max(0.0, (expires - timezone.now()).total_seconds()) + 0.3)
        for _ in range(4):
            response = client.get("/api/v1/browse", headers={"X-API-Key": expiring})
            assert (response.status_code, response.json()["code"]) == (401, "invalid_api_key")
    gateway.stop()

    # Behind no trusted proxy, X-Forwarded-For is the client's own claim: ignored.
    untrusting = start_gateway(FORWARDED_ALLOW_IPS="10.9.9.9")
    with httpx.Client(base_url=untrusting.url, timeout=20, trust_env=False) as client:
        proxied = {"X-API-Key": office_only, "X-Forwarded-For": "203.0.113.7"}
        for _ in range(4):
            response = client.get("/api/v1/browse", headers=proxied)
            assert (response.status_code, response.json()["code"]) == (403, "key_not_allowed_here")
    assert reader_key.scopes == ["read"]
