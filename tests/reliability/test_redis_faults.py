"""Redis unreachable mid-run, and back: a fault proxy sits between the gateway and the shared
Redis (127.0.0.1:6379, db 11 — the server itself is never stopped: others use it).

What must hold (SECURITY.md, `apikeys/limits.py`): every answer is JSON, never a bare 500;
reads fail open (served without limit headers), anything that spends credits fails closed (503
`limiter_unavailable` with Retry-After, nothing sent to Flash), each answer within a bounded
time; and the gateway recovers by itself once Redis answers again. No usage record is lost on
the way: every metered call the gateway served, before, during and after the outage, leaves
exactly one record (matched by request id); a call the limiter refused leaves none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from devpeers.faultproxy import FaultProxy
from tests.reliability.conftest import assert_json_error, redis_caches

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_DB = 11


def _redis_up() -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_proxy(settings: Any) -> Iterator[FaultProxy]:
    if not _redis_up():
        pytest.skip("needs a Redis server on 127.0.0.1:6379")
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    proxy = FaultProxy("127.0.0.1", 6379).start()
    url = f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}"
    settings.REDIS_URL = url
    settings.CACHES = redis_caches(settings, url, "tpb-rel")
    yield proxy
    proxy.stop()
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


def _timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


METERED = ("relay_read", "clockchain_read", "drf_read", "me", "generate")  # every call


def _expected_records(rounds: list[dict[str, httpx.Response]]) -> set[str]:
    """Request ids that must each have one usage record: every metered call that was served.
    Refused by the limiter (relay routes: before the call is metered) means no record."""
    expected = set()
    for answers in rounds:
        for name in METERED:
            response = answers[name]
            refused = response.status_code in (429, 503) and response.json().get("code") in (
                "rate_limited",
                "limiter_unavailable",
            )
            if name in ("drf_read", "me") or not refused:  # DRF views fail open
                expected.add(response.headers["X-Request-ID"])
    return expected


def _exercise(gateway: httpx.Client, auth: dict[str, str]) -> dict[str, httpx.Response]:
    """One of each kind of call: relay read, DRF read, DRF write, credit-spending generation."""
    answers = {}
    for name, call in [
        ("relay_read", lambda: gateway.get("/api/v1/credits/balance", headers=auth)),
        ("clockchain_read", lambda: gateway.get("/api/v1/moments", headers=auth)),
        ("drf_read", lambda: gateway.get("/api/v1/keys", headers=auth)),
        ("me", lambda: gateway.get("/api/v1/auth/me", headers=auth)),
        (
            "generate",
            lambda: gateway.post("/api/v1/generate", json={"query": "Apollo 11"}, headers=auth),
        ),
    ]:
        response, elapsed = _timed(call)
        assert elapsed < 2.0, (name, elapsed)
        assert response.headers["content-type"].startswith("application/json"), (
            name,
            response.text,
        )
        assert response.status_code != 500, (name, response.text)
        answers[name] = response
    return answers


@pytest.mark.parametrize("outage", ["refuse", "hang"])
def test_redis_outage_and_recovery(
    gateway: httpx.Client,
    auth: dict[str, str],
    flash_peer: Any,
    redis_proxy: FaultProxy,
    settings: Any,
    outage: str,
    usage: Any,
) -> None:
    settings.UPSTREAM_READ_TIMEOUT = 5
    healthy = _exercise(gateway, auth)
    rounds = [healthy]
    for name in ("relay_read", "clockchain_read", "drf_read", "generate"):
        assert healthy[name].status_code == 200, (name, healthy[name].text)
        assert "X-RateLimit-Limit" in healthy[name].headers, name
    generations = len(flash_peer.requests_to("/api/v1/timepoints/generate"))

    # Redis goes away: open connections reset, new ones refused or left hanging.
    redis_proxy.mode = outage
    redis_proxy.drop_open_connections()
    for _ in range(2):  # the first call pays the timeout, the next ones hit the breaker
        down = _exercise(gateway, auth)
        rounds.append(down)
        for name in ("relay_read", "clockchain_read", "drf_read", "me"):
            assert down[name].status_code == 200, (name, down[name].text)
        assert "X-RateLimit-Limit" not in down["relay_read"].headers  # failed open
        assert_json_error(down["generate"], 503, "limiter_unavailable")
        assert down["generate"].headers["Retry-After"] == "1"
    assert len(flash_peer.requests_to("/api/v1/timepoints/generate")) == generations

    # Redis is back: no restart, the breaker closes within a second.
    redis_proxy.mode = "pass"
    time.sleep(1.1)
    back = _exercise(gateway, auth)
    rounds.append(back)
    for name in ("relay_read", "drf_read", "generate"):
        assert back[name].status_code == 200, (name, back[name].text)
        assert "X-RateLimit-Limit" in back[name].headers, name
    assert len(flash_peer.requests_to("/api/v1/timepoints/generate")) == generations + 1

    # Usage: one record per served metered call, none lost while Redis was away, none doubled.
    records = usage()
    expected = _expected_records(rounds)
    recorded = [record.request_id for record in records]
    assert len(recorded) == len(set(recorded)), "a usage record was written twice"
    assert set(recorded) == expected, (
        f"lost: {sorted(expected - set(recorded))}, unexpected: {sorted(set(recorded) - expected)}"
    )
    assert len(records) == len(rounds) * len(METERED) - 2  # the two refused generations
    assert {r.status for r in records} == {200}
