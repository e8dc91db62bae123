"""Signing keys: rotation, the unknown-kid refetch cooldown, and a JWKS that hangs."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

import pytest

ME = "/api/v1/auth/me"


@pytest.fixture
def signed_up(db: Any, auth0: Any, flash_peer: Any) -> str:
    """alice exists (the first request created her); returns her sub."""
    from accounts.models import User

    flash_id = flash_peer.add_user("auth0|alice", email="alice@example.com")
    User.objects.create_user(
        username="auth0|alice", auth0_sub="auth0|alice", flash_user_id=flash_id
    )
    return "auth0|alice"


def test_key_rotation_picks_up_the_new_kid_and_drops_the_old_one_after_the_cache_lifetime(
    client: Any, auth0: Any, signed_up: str, bearer: Any, settings: Any
) -> None:
    settings.AUTH0_JWKS_CACHE_SECONDS = 1
    settings.AUTH0_JWKS_REFETCH_COOLDOWN = 0
    old = auth0.keys[0]
    assert client.get(ME, **bearer(auth0.token(key=old))).status_code == 200

    new = auth0.add_key()  # Auth0 publishes the next key next to the current one
    assert client.get(ME, **bearer(auth0.token(key=new))).status_code == 200
    assert client.get(ME, **bearer(auth0.token(key=old))).status_code == 200

    auth0.keys.remove(old)  # ...and later retires the old one
    assert client.get(ME, **bearer(auth0.token(key=old))).status_code == 200  # still cached
    time.sleep(1.1)
    response = client.get(ME, **bearer(auth0.token(key=old)))
    assert response.status_code == 401 and response.json()["code"] == "unknown_key"
    assert client.get(ME, **bearer(auth0.token(key=new))).status_code == 200


def test_random_unknown_kids_cause_at_most_one_fetch_per_cooldown(
    client: Any, auth0: Any, signed_up: str, bearer: Any, settings: Any
) -> None:
    settings.AUTH0_JWKS_REFETCH_COOLDOWN = 60
    settings.AUTH_FAILURE_LIMIT_PER_MINUTE = 1000  # this test is about the JWKS, not the limiter
    assert client.get(ME, **bearer(auth0.token())).status_code == 200
    assert auth0.jwks_requests == 1

    statuses = []
    for _ in range(25):
        token = auth0.token(headers={"kid": uuid.uuid4().hex})
        statuses.append(client.get(ME, **bearer(token)).status_code)

    def hammer() -> None:
        from django.test import Client

        other = Client()
        for _ in range(5):
            token = auth0.token(headers={"kid": uuid.uuid4().hex})
            statuses.append(other.get(ME, **bearer(token)).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [401] * 50
    assert auth0.jwks_requests == 1  # the initial fetch started the cooldown


def test_unknown_kid_refetches_once_after_the_cooldown(
    client: Any, auth0: Any, signed_up: str, bearer: Any, settings: Any
) -> None:
    settings.AUTH0_JWKS_REFETCH_COOLDOWN = 1
    assert client.get(ME, **bearer(auth0.token())).status_code == 200
    rotated = auth0.add_key()
    assert client.get(ME, **bearer(auth0.token(key=rotated))).status_code == 401  # cooling down
    assert auth0.jwks_requests == 1
    time.sleep(1.05)
    for _ in range(10):
        assert client.get(ME, **bearer(auth0.token(key=rotated))).status_code == 200
    assert auth0.jwks_requests == 2


def test_a_hanging_jwks_fails_with_503_within_the_timeout(
    db: Any, auth0: Any, bearer: Any, settings: Any
) -> None:
    from django.test import Client

    settings.AUTH0_JWKS_TIMEOUT = 0.3
    auth0.hang = 2.0
    results: list[tuple[int, str, float]] = []

    def call() -> None:
        started = time.monotonic()
        response = Client().get(ME, **bearer(auth0.token()))
        results.append((response.status_code, response.json()["code"], time.monotonic() - started))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [(status, code) for status, code, _ in results] == [(503, "auth_unavailable")] * 4
    assert max(elapsed for *_, elapsed in results) < 1.0  # ~one timeout, not one per request
    assert auth0.jwks_requests <= 2


def test_jwks_recovers_after_an_outage(
    client: Any, auth0: Any, signed_up: str, bearer: Any, settings: Any
) -> None:
    settings.AUTH0_JWKS_TIMEOUT = 0.2
    auth0.hang = 1.0
    response = client.get(ME, **bearer(auth0.token()))
    assert response.status_code == 503
    assert response["Retry-After"]
    auth0.hang = 0
    assert client.get(ME, **bearer(auth0.token())).status_code == 200


JWKS_DELAY = 0.6  # seconds the loopback JWKS holds its answer in the async-path test


async def _authenticate_while_ticking(request: Any, authenticate: Any) -> tuple[Any, list[float]]:
    """Run `authenticate(request)` next to a coroutine that ticks every 10 ms; returns the caller
    and the tick times. A fetch that blocked the event loop would stop the ticks for its whole
    duration."""
    import asyncio

    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def auth() -> Any:
        try:
            return await authenticate(request)
        finally:
            done.set()

    caller, _ = await asyncio.gather(auth(), ticker())
    return caller, ticks


@pytest.mark.django_db(transaction=True)  # aauthenticate's worker thread has its own connection
def test_the_async_path_verifies_off_the_event_loop(
    auth0: Any, signed_up: str, bearer: Any, settings: Any
) -> None:
    from asgiref.sync import async_to_sync
    from django.test import AsyncRequestFactory

    from accounts.authentication import aauthenticate

    settings.AUTH0_JWKS_TIMEOUT = 5
    auth0.hang = JWKS_DELAY  # the cold key cache must fetch, and the fetch takes this long
    request = AsyncRequestFactory().get(ME, headers={"Authorization": f"Bearer {auth0.token()}"})
    started = time.monotonic()
    caller, ticks = async_to_sync(_authenticate_while_ticking)(request, aauthenticate)
    elapsed = time.monotonic() - started

    assert caller.kind == "jwt" and caller.user.auth0_sub == signed_up
    assert auth0.jwks_requests == 1 and elapsed >= JWKS_DELAY
    # The loop kept serving other coroutines while the JWKS answer was outstanding: ticks all
    # through the delay, never a gap anywhere near the delay (a blocking fetch is one gap of it).
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) >= 10, ticks
    assert max(gaps) < JWKS_DELAY / 2, max(gaps)
    assert ticks[-1] - ticks[0] >= JWKS_DELAY * 0.9
