"""Exactly one usage record per served call, through the production server and a restart.

1 000 relayed calls (Clockchain reads on one key, Flash balance reads on another, including a
burst of 200 at once) go through gunicorn + UvicornWorker with 2 workers, in front of the contract
peers, with a graceful restart (SIGTERM, start again) halfway. Afterwards: exactly 1 000 records,
and after `manage.py rollup_usage` the daily and monthly aggregates, `GET /api/v1/keys/{id}/usage`
and `GET /api/v1/usage` agree with the records, per key and per endpoint.

The restart does not wait for the background flush: a worker stopped by SIGTERM writes what it
still buffers in the ASGI lifespan shutdown (timepoint_billing/asgi_handler.py). `atexit` would
not do: uvicorn re-raises the SIGTERM it captured once it has drained, with the default handler,
so the process dies by the signal. `test_sigterm_flushes_what_the_workers_buffered` isolates it
(background flush off: only the shutdown writes).

Needs PostgreSQL (both workers and this test share the database) and Redis (the limiter both
workers share); skipped otherwise. Prints its figures (`-s` to see them).
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
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from metering.models import UsageDaily, UsageMonthly, UsageRecord

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql" or not django_settings.REDIS_URL,
        reason="needs DATABASE_URL (PostgreSQL: two gateway workers and the test share it) and "
        "REDIS_URL (the limiter both workers share)",
    ),
]

CLOCKCHAIN_READS = ["/api/v1/browse", "/api/v1/moments", "/api/v1/search?q=rome"]
BALANCE = "/api/v1/credits/balance"
CALLS_PER_HALF = 500
BURST = 200
STEADY_CONCURRENCY = 20
GRACEFUL_STOP_SECONDS = 35  # gunicorn's --graceful-timeout is 30


def _stop(gateway: Any) -> None:
    """SIGTERM: the workers finish what they serve and write their usage buffers on the way out.
    A stop that is not graceful (killed after the timeout, exit code not 0) fails the test."""
    code = gateway.stop(GRACEFUL_STOP_SECONDS)
    assert code == 0, f"no graceful stop (exit {code}):\n{gateway.log_tail()}"


def _fail_opens(gateway: Any) -> int:
    """Reads the limiter served without Redis (its documented fail-open policy)."""
    return int(gateway.log.read_text(errors="replace").count('"limiter_fail_open"'))


@pytest.fixture
def start_gateway(production_gateway: Any, flash_peer: Any, clockchain_peer: Any) -> Any:
    """The production server on the test database (PostgreSQL: both runs of a restart share it)
    and the shared Redis."""
    env = {
        "REDIS_URL": django_settings.REDIS_URL,
        "METERING_FLUSH_INTERVAL_SECONDS": "1",  # the production default
        # 200 calls at once saturate two workers on a small machine: a Redis reply waiting for
        # the GIL must not time out (reads would fail open; not what this test is about).
        "REDIS_SOCKET_TIMEOUT": "2",
        "UPSTREAM_POOL_TIMEOUT": "20",
        "REDIS_CONNECT_TIMEOUT": "1",
    }

    def start(**overrides: str) -> Any:
        return production_gateway({**env, **overrides})

    return start


def _plan(count: int, offset: int) -> list[tuple[str, str]]:
    """(which key, path): every fourth call a Flash balance read, the rest Clockchain reads."""
    plan = []
    for n in range(offset, offset + count):
        if n % 4 == 3:
            plan.append(("flash", BALANCE))
        else:
            plan.append(("clockchain", CLOCKCHAIN_READS[n % len(CLOCKCHAIN_READS)]))
    return plan


async def _send(
    url: str, plan: list[tuple[str, str]], raw_keys: dict[str, str], concurrency: int
) -> list[int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=limits, trust_env=False
    ) as client:

        async def one(which: str, path: str) -> int:
            async with gate:
                response = await client.get(path, headers={"X-API-Key": raw_keys[which]})
                return response.status_code

        return list(await asyncio.gather(*(one(which, path) for which, path in plan)))


def _wait_for_records(key_ids: list[int], expected: int, timeout: float = 15) -> None:
    """Until the workers' background flush has written `expected` records (never more)."""
    deadline = time.monotonic() + timeout
    while (count := UsageRecord.objects.filter(api_key_id__in=key_ids).count()) < expected:
        assert time.monotonic() < deadline, f"{count} of {expected} records flushed"
        time.sleep(0.1)
    assert count == expected


def _record_counts(key_ids: list[int]) -> Counter[tuple[int, str, str]]:
    counts: Counter[tuple[int, str, str]] = Counter()
    for key_id, endpoint, method in UsageRecord.objects.filter(api_key_id__in=key_ids).values_list(
        "api_key_id", "endpoint", "method"
    ):
        counts[(key_id, endpoint, method)] += 1
    return counts


def _aggregate_counts(model: Any, key_ids: list[int]) -> Counter[tuple[int, str, str]]:
    counts: Counter[tuple[int, str, str]] = Counter()
    for row in model.objects.filter(api_key_id__in=key_ids).values(
        "api_key_id", "endpoint", "method", "requests", "errors", "credits_spent"
    ):
        assert row["errors"] == 0 and row["credits_spent"] == 0, row
        counts[(row["api_key_id"], row["endpoint"], row["method"])] += row["requests"]
    return counts


def test_every_call_is_metered_exactly_once_across_a_graceful_restart(
    start_gateway: Any, user: Any, make_key: Any, auth_headers: dict[str, Any]
) -> None:
    generous = {
        "rate_limit_per_minute": 100_000,
        "rate_limit_per_day": 1_000_000,
        "concurrency_limit": 1_000,
    }
    clockchain_key, clockchain_raw = make_key(user, name="clockchain reads", **generous)
    flash_key, flash_raw = make_key(user, name="balance reads", **generous)
    raw_keys = {"clockchain": clockchain_raw, "flash": flash_raw}
    key_ids = [clockchain_key.pk, flash_key.pk]
    steady = CALLS_PER_HALF - BURST
    figures: dict[str, Any] = {}
    began = time.monotonic()

    gateway = start_gateway()
    figures["first start s"] = round(time.monotonic() - began, 1)
    mark = time.monotonic()
    statuses = asyncio.run(_send(gateway.url, _plan(steady, 0), raw_keys, STEADY_CONCURRENCY))
    figures["steady 1 s"] = round(time.monotonic() - mark, 1)
    mark = time.monotonic()
    statuses += asyncio.run(_send(gateway.url, _plan(BURST, steady), raw_keys, BURST))
    figures["burst of 200 s"] = round(time.monotonic() - mark, 1)
    assert Counter(statuses) == {200: CALLS_PER_HALF}, (Counter(statuses), gateway.log_tail())

    mark = time.monotonic()
    _stop(gateway)  # right away: what is still buffered is written by the lifespan shutdown
    figures["graceful stop s"] = round(time.monotonic() - mark, 1)
    figures["limiter fail-open 1"] = _fail_opens(gateway)
    figures["records after stop"] = UsageRecord.objects.filter(api_key_id__in=key_ids).count()
    assert figures["records after stop"] == CALLS_PER_HALF

    mark = time.monotonic()
    gateway = start_gateway()
    figures["restart s"] = round(time.monotonic() - mark, 1)
    mark = time.monotonic()
    plan = _plan(CALLS_PER_HALF, CALLS_PER_HALF)
    second = asyncio.run(_send(gateway.url, plan, raw_keys, STEADY_CONCURRENCY))
    figures["steady 2 s"] = round(time.monotonic() - mark, 1)
    assert Counter(second) == {200: CALLS_PER_HALF}, (Counter(second), gateway.log_tail())
    _wait_for_records(key_ids, 2 * CALLS_PER_HALF)
    _stop(gateway)
    figures["limiter fail-open 2"] = _fail_opens(gateway)

    records = _record_counts(key_ids)
    sent = Counter(which for which, _ in _plan(2 * CALLS_PER_HALF, 0))
    figures["records"] = sum(records.values())
    figures["calls per key"] = dict(sent)
    assert figures["records"] == 2 * CALLS_PER_HALF
    assert sum(n for (key, *_), n in records.items() if key == flash_key.pk) == sent["flash"]
    assert (
        sum(n for (key, *_), n in records.items() if key == clockchain_key.pk)
        == (sent["clockchain"])
    )
    assert not UsageRecord.objects.filter(api_key_id__in=key_ids, status__gte=400).exists()

    mark = time.monotonic()
    call_command("rollup_usage")
    figures["rollup s"] = round(time.monotonic() - mark, 2)
    assert _aggregate_counts(UsageDaily, key_ids) == records
    assert _aggregate_counts(UsageMonthly, key_ids) == records

    today = timezone.now().date()
    window = f"from={today - timedelta(days=1)}&to={today}"
    client = Client()
    for key in (clockchain_key, flash_key):
        for granularity in ("day", "month"):
            response = client.get(
                f"/api/v1/keys/{key.pk}/usage?{window}&granularity={granularity}", **auth_headers
            )
            assert response.status_code == 200, response.content
            body = response.json()
            mine = {k: n for k, n in records.items() if k[0] == key.pk}
            assert body["totals"] == {
                "requests": sum(mine.values()),
                "errors": 0,
                "credits_spent": 0,
            }
            per_endpoint: Counter[tuple[int, str, str]] = Counter()
            for row in body["rows"]:
                per_endpoint[(key.pk, row["endpoint"], row["method"])] += row["requests"]
                assert 0 < row["p50_ms"] <= row["p95_ms"], row
            assert per_endpoint == mine

    for granularity in ("day", "month"):
        response = client.get(f"/api/v1/usage?{window}&granularity={granularity}", **auth_headers)
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["totals"]["requests"] == 2 * CALLS_PER_HALF
        assert sum(period["requests"] for period in body["periods"]) == 2 * CALLS_PER_HALF
        assert {row["api_key_id"]: row["requests"] for row in body["by_key"]} == {
            clockchain_key.pk: sent["clockchain"],
            flash_key.pk: sent["flash"],
        }
        by_endpoint = Counter[tuple[str, str]]()
        for (_, endpoint, method), n in records.items():
            by_endpoint[(endpoint, method)] += n
        assert {
            (row["endpoint"], row["method"]): row["requests"] for row in body["by_endpoint"]
        } == dict(by_endpoint)

    figures["total s"] = round(time.monotonic() - began, 1)
    print("\nmetering exact:", figures)


def test_sigterm_flushes_what_the_workers_buffered(
    start_gateway: Any, make_key: Any, user: Any
) -> None:
    key, raw = make_key(user, rate_limit_per_minute=10_000, concurrency_limit=100)
    gateway = start_gateway(METERING_FLUSH_INTERVAL_SECONDS="3600")  # only the exit flush writes
    statuses = asyncio.run(_send(gateway.url, [("key", BALANCE)] * 40, {"key": raw}, 10))
    assert Counter(statuses) == {200: 40}
    assert UsageRecord.objects.filter(api_key=key).count() == 0  # all still buffered
    _stop(gateway)
    assert UsageRecord.objects.filter(api_key=key).count() == 40
