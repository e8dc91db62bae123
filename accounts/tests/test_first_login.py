"""First sight of an Auth0 subject: one user row and one Flash resolve, or nothing at all."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.test import Client

from accounts.models import User

LOGIN = "/api/v1/auth/login"


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_first_requests_create_one_user_and_one_resolve(
    auth0: Any, flash_peer: Any, bearer: Any, settings: Any
) -> None:
    flash_peer.delay = 0.2  # keep the first resolve in flight while the others arrive
    settings.USER_CONCURRENCY_LIMIT = 10  # /auth/me is limited per user; all ten are one user
    barrier = threading.Barrier(10)
    results: list[tuple[int, Any]] = []

    def first_request() -> None:
        token = auth0.token("auth0|crowd", email="crowd@example.com", name="Crowd")
        barrier.wait()
        # GET /auth/me, not login: ten session INSERTs at once would trip the in-memory SQLite
        # test database's table locks (shared cache ignores the busy timeout); a file database
        # and PostgreSQL queue them.
        response = Client().get("/api/v1/auth/me", **bearer(token))
        results.append((response.status_code, response.json()))

    threads = [threading.Thread(target=first_request) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [status for status, _ in results] == [200] * 10, results
    assert User.objects.filter(auth0_sub="auth0|crowd").count() == 1
    user = User.objects.get(auth0_sub="auth0|crowd")
    resolves = flash_peer.requests_to("/api/v1/users/resolve")
    assert len(resolves) == 1
    assert {body["flash_user_id"] for _, body in results} == {user.flash_user_id}
    assert user.flash_user_id and user.email == "crowd@example.com"


@pytest.mark.django_db
def test_flash_down_creates_nothing_and_a_later_request_succeeds(
    client: Any, auth0: Any, flash_peer: Any, bearer: Any
) -> None:
    flash_peer.fail_next = 1
    response = client.post(LOGIN, **bearer(auth0.token("auth0|dora", email="d@example.com")))
    assert response.status_code == 503
    assert response.json()["code"] == "flash_unavailable"
    assert response["Retry-After"]
    assert not User.objects.filter(auth0_sub="auth0|dora").exists()

    response = client.post(LOGIN, **bearer(auth0.token("auth0|dora", email="d@example.com")))
    assert response.status_code == 200, response.content
    user = User.objects.get(auth0_sub="auth0|dora")
    assert response.json()["user"]["flash_user_id"] == user.flash_user_id != ""
    assert flash_peer.accounts[user.flash_user_id].balance == 50


@pytest.mark.django_db
def test_a_row_without_flash_id_gets_resolved_on_its_next_request(
    client: Any, auth0: Any, flash_peer: Any, bearer: Any
) -> None:
    # e.g. someone who first signed in to the portal through the browser (OIDC)
    User.objects.create_user(username="auth0|eve", auth0_sub="auth0|eve", email="eve@example.com")
    response = client.get("/api/v1/auth/me", **bearer(auth0.token("auth0|eve")))
    assert response.status_code == 200
    assert response.json()["flash_user_id"]
    assert len(flash_peer.requests_to("/api/v1/users/resolve")) == 1
    client.get("/api/v1/auth/me", **bearer(auth0.token("auth0|eve")))
    assert len(flash_peer.requests_to("/api/v1/users/resolve")) == 1


@pytest.mark.django_db
def test_the_resolve_is_signed_and_carries_the_profile(
    client: Any, auth0: Any, flash_peer: Any, bearer: Any
) -> None:
    token = auth0.token("auth0|fay", email="fay@example.com", name="Fay")
    assert client.post(LOGIN, **bearer(token)).status_code == 200
    (request,) = flash_peer.requests_to("/api/v1/users/resolve")
    assert json.loads(request.body) == {
        "external_id": "auth0|fay",
        "email": "fay@example.com",
        "display_name": "Fay",
    }
    assert request.headers["x-gateway-signature"].startswith("v1=")
    assert flash_peer.users[User.objects.get(auth0_sub="auth0|fay").flash_user_id].email == (
        "fay@example.com"
    )
