"""Fixtures for the relay tests: the real ASGI gateway on a loopback port, in front of the
Flash and Clockchain contract peers (also on loopback).

Every relay test also runs under the event-loop guard (`devpeers/loopguard.py`): a blocking socket
call made on the gateway's event loop fails the test that caused it (issue 13 point 6). With
REDIS_URL set (CI on PostgreSQL + Redis) that covers the limiter, the Clockchain cache, the cost
table and the credit reservations; `test_event_loop.py` covers them with Redis in any run that
has a Redis server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devpeers import loopguard


@pytest.fixture(scope="session")
def _gateway_server() -> Iterator[Any]:
    from devpeers.server import start_peer
    from timepoint_billing.asgi import application

    running = start_peer(application)
    loopguard.watch(running.loop)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _no_blocking_io_on_the_loop() -> Iterator[None]:
    """Fails the test when the gateway's event loop made a blocking socket call during it."""
    loopguard.take()
    yield
    found = loopguard.take()
    if found:
        pytest.fail(loopguard.report(found), pytrace=False)


@pytest.fixture(autouse=True)
def _relay_settings(settings: Any) -> Iterator[None]:
    """Limits high enough not to interfere (isolation itself is the root conftest's)."""
    settings.USER_RATE_LIMIT_PER_MINUTE = 10_000
    settings.USER_RATE_LIMIT_PER_DAY = 100_000
    settings.USER_CONCURRENCY_LIMIT = 50
    settings.UPSTREAM_POOL_TIMEOUT = 5.0
    yield


@pytest.fixture
def gateway(
    _gateway_server: Any, transactional_db: Any, flash_peer: Any, clockchain_peer: Any
) -> Iterator[httpx.Client]:
    """An HTTP client to the running gateway (the server thread sees committed rows only)."""
    with httpx.Client(base_url=_gateway_server.url, timeout=10, trust_env=False) as client:
        yield client


@pytest.fixture
def auth(session_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {session_token}"}


@pytest.fixture
def usage() -> Any:
    """Flush and return the usage records written so far, oldest first."""

    def rows() -> list[Any]:
        from metering.models import UsageRecord
        from metering.services import flush_usage

        flush_usage()
        return list(UsageRecord.objects.order_by("id"))

    return rows
