"""Limits that hold in the conditions production brings (issue 13), on the production server:
gunicorn + GatewayUvicornWorker, 2 workers, PostgreSQL and Redis, the production timeouts.

- A burst does not switch the rate limit off: 200 and 1 000 parallel reads against a 50/minute key
  admit exactly 50, the rest 429 with Retry-After. (It used to: on two busy cores every Redis reply
  looked late by the event loop's clock, the limiter's breaker opened and reads failed open.)
- A revoked key, and a rolled key whose grace ended, stop at once on both workers (each caches
  key lookups for 5 s).
- A client that gives up on a read frees its concurrency slot and the upstream call at once.

Needs PostgreSQL (the workers and the test share the database) and Redis (the limiter the workers
share); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connection

from tests.reliability.conftest import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql" or not django_settings.REDIS_URL,
        reason="needs DATABASE_URL (PostgreSQL: two gateway workers and the test share it) and "
        "REDIS_URL (the limiter both workers share)",
    ),
]


def _inside_one_minute(seconds_needed: float) -> None:
    """The minute window is the calendar minute: start where the whole burst fits in one."""
    into = time.time() % 60
    if into > 60 - seconds_needed:
        time.sleep(60 - into + 0.5)


async def _burst(url: str, path: str, headers: dict[str, str], count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, trust_env=False) as c:
        return list(await asyncio.gather(*(c.get(path, headers=headers) for _ in range(count))))


@pytest.mark.parametrize("burst", [200, 1000])
def test_a_burst_admits_exactly_the_limit(
    production_gateway: Any, clockchain_peer: Any, user: Any, make_key: Any, burst: int
) -> None:
    _, raw = make_key(
        user, rate_limit_per_minute=50, rate_limit_per_day=100_000, concurrency_limit=5_000
    )
    # The production defaults for every timeout: nothing here hides a busy loop.
    gateway = production_gateway({"REDIS_URL": django_settings.REDIS_URL})
    _inside_one_minute(30)
    answers = asyncio.run(_burst(gateway.url, "/api/v1/moments", {"X-API-Key": raw}, burst))

    statuses = Counter(response.status_code for response in answers)
    # Exactly 50 admitted. The Clockchain peer answers from a thread of this process, which the
    # 1 000-connection client starves of the GIL on two busy cores: an admitted call may time out
    # at the upstream (504), and it was still counted against the limit, as it should be.
    admitted = statuses[200] + statuses[504]
    assert (admitted, statuses[429]) == (50, burst - 50), (statuses, gateway.log_tail())
    assert set(statuses) <= {200, 429, 504}, (statuses, gateway.log_tail())
    for response in answers:
        if response.status_code == 429:
            assert response.json()["code"] == "rate_limited"
            assert int(response.headers["Retry-After"]) >= 1
            assert response.headers["X-RateLimit-Remaining"] == "0"
        else:
            assert "X-RateLimit-Limit" in response.headers  # counted, never failed open
    log = gateway.log.read_text(errors="replace")
    assert '"limiter_fail_open"' not in log and '"limiter_redis_unavailable"' not in log
    gateway.kill()


# --- Revocation and the end of a roll's grace, on every worker


def _fresh_connection_calls(url: str, raw: str, count: int) -> list[int]:
    """`count` reads at once, each on its own connection (so both workers take some), with the
    key; their statuses. The relay route and a DRF route: both paths check the key."""

    async def calls() -> list[int]:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, trust_env=False) as c:
            paths = ["/api/v1/moments", "/api/v1/keys"] * (count // 2)
            answers = await asyncio.gather(*(c.get(p, headers={"X-API-Key": raw}) for p in paths))
        return [answer.status_code for answer in answers]

    return asyncio.run(calls())


def test_a_revoked_key_stops_on_every_worker_at_once(
    production_gateway: Any, clockchain_peer: Any, user: Any, make_key: Any, session_token: str
) -> None:
    key, raw = make_key(user, rate_limit_per_minute=10_000, concurrency_limit=100)
    gateway = production_gateway({"REDIS_URL": django_settings.REDIS_URL})
    # Both workers verify the key and cache the lookup (trusted for 5 s in each process).
    assert set(_fresh_connection_calls(gateway.url, raw, 40)) == {200}

    revoked = httpx.delete(
        f"{gateway.url}/api/v1/keys/{key.pk}",
        headers={"Authorization": f"Bearer {session_token}"},
        trust_env=False,
    )
    assert revoked.status_code == 204, revoked.text
    # At once, whichever worker answers; before: the other worker served it for up to 5 s.
    statuses = _fresh_connection_calls(gateway.url, raw, 40)
    assert set(statuses) <= {401, 429}, statuses
    gateway.kill()


def test_a_rolled_key_stops_on_every_worker_when_its_grace_ends(
    production_gateway: Any, clockchain_peer: Any, user: Any, make_key: Any, session_token: str
) -> None:
    key, raw = make_key(user, rate_limit_per_minute=10_000, concurrency_limit=100)
    gateway = production_gateway({"REDIS_URL": django_settings.REDIS_URL})
    assert set(_fresh_connection_calls(gateway.url, raw, 40)) == {200}

    rolled = httpx.post(
        f"{gateway.url}/api/v1/keys/{key.pk}/roll",
        json={"grace_seconds": 2},
        headers={"Authorization": f"Bearer {session_token}"},
        trust_env=False,
    )
    assert rolled.status_code in (200, 201), rolled.text
    rolled_at = time.monotonic()
    new_raw = rolled.json()["key"]
    # Inside the grace both keys work.
    assert set(_fresh_connection_calls(gateway.url, raw, 10)) == {200}
    assert set(_fresh_connection_calls(gateway.url, new_raw, 10)) == {200}
    # From 1 s after the grace ended until well past the 5 s cache: the old key never works.
    time.sleep(max(0.0, rolled_at + 3.0 - time.monotonic()))
    while time.monotonic() < rolled_at + 7.0:
        statuses = _fresh_connection_calls(gateway.url, raw, 20)
        # 401, or 429 once the failed-authentication throttle slows this failing key down.
        assert set(statuses) <= {401, 429}, (round(time.monotonic() - rolled_at, 2), statuses)
    assert set(_fresh_connection_calls(gateway.url, new_raw, 10)) == {200}
    gateway.kill()


# --- A client that gives up


def test_a_client_that_gives_up_frees_its_slot_and_its_upstream_call(
    production_gateway: Any, clockchain_proxy: Any, user: Any, make_key: Any
) -> None:
    """A free-tier-like key (concurrency 1) whose client abandons a slow read can retry at once;
    the gateway's call to Clockchain is cancelled rather than left to its timeout."""
    _, raw = make_key(user, rate_limit_per_minute=1_000, concurrency_limit=1)
    gateway = production_gateway(
        {
            "REDIS_URL": django_settings.REDIS_URL,
            "UPSTREAM_READ_TIMEOUT": "60",  # the slot would be held this long
            "CLOCKCHAIN_CACHE_SECONDS": "0",
        }
    )
    clockchain_proxy.mode = "hang"
    client = socket.create_connection(("127.0.0.1", gateway.port))
    client.sendall(
        f"GET /api/v1/moments HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {raw}\r\n\r\n".encode()
    )
    # The gateway took the slot and is waiting on Clockchain; then the client leaves.
    wait_for(lambda: len(clockchain_proxy._open) == 1, timeout=30)
    client.close()
    wait_for(lambda: not clockchain_proxy._open, timeout=5)  # the upstream call was cancelled

    clockchain_proxy.mode = "pass"
    retry = httpx.get(
        f"{gateway.url}/api/v1/moments", headers={"X-API-Key": raw}, timeout=30, trust_env=False
    )
    assert retry.status_code == 200, retry.text  # not 429 `concurrency` for the next 60 s
    gateway.kill()


# --- Failed authentication behind a proxy


def test_other_callers_failures_never_lock_a_valid_credential_out(
    production_gateway: Any, clockchain_peer: Any, user: Any, make_key: Any, session_token: str
) -> None:
    """The server trusts the proxy on loopback (gunicorn's FORWARDED_ALLOW_IPS default), as the
    deploy files tell operators to trust Railway's: the client address is X-Forwarded-For's."""
    _, raw = make_key(user, rate_limit_per_minute=10_000, concurrency_limit=100)
    gateway = production_gateway({"REDIS_URL": django_settings.REDIS_URL})
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        fuzzed = [
            client.get("/api/v1/moments", headers={**attacker, "X-API-Key": f"tp_live_bad{i}"})
            for i in range(40)
        ]
        assert fuzzed[0].status_code == 401
        assert fuzzed[-1].status_code == 429  # the failing address is slowed down
        assert fuzzed[-1].json()["code"] == "too_many_auth_failures"
        assert int(fuzzed[-1].headers["Retry-After"]) >= 1
        # A valid credential works from anywhere: the attacker's address, another client, or
        # the proxy itself (every client, had the proxy not been trusted).
        for headers in (attacker, {"X-Forwarded-For": "198.51.100.7"}, {}):
            key_call = client.get("/api/v1/moments", headers={**headers, "X-API-Key": raw})
            assert key_call.status_code == 200, (headers, key_call.text)
            session_call = client.get(
                "/api/v1/keys", headers={**headers, "Authorization": f"Bearer {session_token}"}
            )
            assert session_call.status_code == 200, (headers, session_call.text)
        # Another client's first bad token is an honest 401, not the attacker's 429.
        other = client.get(
            "/api/v1/moments",
            headers={"X-Forwarded-For": "198.51.100.7", "X-API-Key": "tp_live_typo"},
        )
        assert other.status_code == 401
    gateway.kill()
