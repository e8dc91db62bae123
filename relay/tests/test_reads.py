"""Credits, timepoints and Clockchain reads through the running gateway."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from devpeers.clockchain import (
    CAESAR,
    MOON,
    PRIVATE_CAESAR,
    PRIVATE_MOON,
    PRIVATE_OWNER_A,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_balance_history_costs(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    balance = gateway.get("/api/v1/credits/balance", headers=auth)
    assert balance.status_code == 200
    assert balance.json() == {"balance": 50, "lifetime_earned": 50, "lifetime_spent": 0}
    assert "X-RateLimit-Limit" in balance.headers

    history = gateway.get("/api/v1/credits/history?limit=5&offset=0", headers=auth)
    assert history.status_code == 200 and history.json() == []
    sent = flash_peer.requests_to("/api/v1/credits/history")[-1]
    assert sent.query_string == "limit=5&offset=0"
    assert sent.headers["x-user-id"] == user.flash_user_id

    assert gateway.get("/api/v1/credits/history?limit=500", headers=auth).status_code == 400
    assert gateway.get("/api/v1/credits/history?offset=-1", headers=auth).status_code == 400

    costs = gateway.get("/api/v1/credits/costs", headers=auth)
    assert costs.status_code == 200 and costs.json()["costs"]["generate_hd"] == 10
    gateway.get("/api/v1/credits/costs", headers=auth)
    assert len(flash_peer.requests_to("/api/v1/credits/costs")) == 1  # cached

    rows = usage()
    assert [r.endpoint for r in rows][:2] == [
        "/api/v1/credits/balance",
        "/api/v1/credits/history",
    ]
    assert all(r.upstream == "flash" and r.credits_spent == 0 for r in rows)
    assert len(rows) == 6
    assert [r.status for r in rows] == [200, 200, 400, 400, 200, 200]


def test_unauthenticated_is_401_and_never_relayed(gateway: Any, flash_peer: Any) -> None:
    response = gateway.get("/api/v1/credits/balance")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert flash_peer.requests == []


def test_client_identity_headers_never_reach_flash(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    other = flash_peer.add_user("auth0|someone-else")
    hostile = {
        **auth,
        "X-User-Id": other,
        "x-user-id": other,
        "X-Service-Key": "guess",
        "X-Admin-Key": "guess",
        "X-Gateway-Metered": "true",
        "X-Gateway-Signature": "v1=00",
        "X-Gateway-Timestamp": "1",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "evil",
        "Connection": "close, X-Custom-Hop",
        "X-Custom-Hop": "1",
        "Cookie": "sessionid=abc",
    }
    response = gateway.get("/api/v1/credits/balance", headers=hostile)
    assert response.status_code == 200
    sent = flash_peer.requests_to("/api/v1/credits/balance")[-1]
    assert sent.headers["x-user-id"] == user.flash_user_id
    assert sent.headers["x-service-key"] == flash_peer.service_key
    for name in (
        "x-admin-key",
        "x-gateway-metered",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-custom-hop",
        "cookie",
        "authorization",
    ):
        assert name not in sent.headers


def test_clockchain_headers_are_built_from_scratch(
    gateway: Any, auth: Any, clockchain_peer: Any
) -> None:
    hostile = {**auth, "X-Service-Key": "guess", "X-User-Id": PRIVATE_OWNER_A}
    assert gateway.get("/api/v1/browse", headers=hostile).status_code == 200
    sent = clockchain_peer.requests_to("/api/v1/browse")[-1]
    assert sent.headers["x-service-key"] == clockchain_peer.service_key
    assert "x-user-id" not in sent.headers and "authorization" not in sent.headers


def test_every_field_of_a_full_timepoint_is_documented(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    """Generated clients see the whole answer: each field a completed generation carries (full
    mode, image included) is a property of the Timepoint schema."""
    mine = flash_peer.add_timepoint(user.flash_user_id, "private")
    response = gateway.get(f"/api/v1/timepoints/{mine}?full=true&include_image=true", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["characters"] is not None and body["scene"] is not None
    schema = gateway.get("/api/schema", headers={"Accept": "application/json"}).json()
    documented = set(schema["components"]["schemas"]["Timepoint"]["properties"])
    assert set(body) - documented == set()


def test_timepoint_get_and_visibility(gateway: Any, auth: Any, flash_peer: Any, user: Any) -> None:
    mine = flash_peer.add_timepoint(user.flash_user_id, "private")
    response = gateway.get(f"/api/v1/timepoints/{mine}?full=true", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == mine and body["visibility"] == "private"
    assert not any(key.startswith("blob_") for key in body)

    published = gateway.patch(
        f"/api/v1/timepoints/{mine}/visibility", json={"visibility": "public"}, headers=auth
    )
    assert published.status_code == 200 and published.json()["visibility"] == "public"
    assert flash_peer.timepoint(mine)["visibility"] == "public"

    bad = gateway.patch(
        f"/api/v1/timepoints/{mine}/visibility", json={"visibility": "Private"}, headers=auth
    )
    assert bad.status_code == 400
    assert flash_peer.timepoint(mine)["visibility"] == "public"

    theirs = flash_peer.add_timepoint(flash_peer.add_user("auth0|other"), "private")
    # Someone else's private timepoint answers exactly as an unknown id (Flash says 403).
    hidden = gateway.get(f"/api/v1/timepoints/{theirs}", headers=auth)
    assert hidden.status_code == 404
    assert hidden.json() == {"detail": "Timepoint not found.", "code": "not_found"}
    not_owner = gateway.patch(
        f"/api/v1/timepoints/{theirs}/visibility", json={"visibility": "public"}, headers=auth
    )
    assert not_owner.status_code == 404
    assert flash_peer.timepoint(theirs)["visibility"] == "private"

    deleted = flash_peer.add_timepoint(user.flash_user_id, "public", is_deleted=True)
    assert gateway.get(f"/api/v1/timepoints/{deleted}", headers=auth).status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert gateway.get(f"/api/v1/timepoints/{missing}", headers=auth).status_code == 404


def test_moment_routes_happy_path(gateway: Any, auth: Any, clockchain_peer: Any) -> None:
    listed = gateway.get("/api/v1/moments?limit=3&sort=year", headers=auth)
    assert listed.status_code == 200
    assert listed.json()["limit"] == 3 and len(listed.json()["items"]) == 3

    detail = gateway.get(f"/api/v1/moments{CAESAR}", headers=auth)
    assert detail.status_code == 200
    assert detail.json()["path"] == CAESAR
    assert "created_by" not in detail.json()

    browse = gateway.get("/api/v1/browse/-44/march", headers=auth)
    assert browse.status_code == 200 and browse.json()["prefix"] == "/-44/march"

    assert gateway.get("/api/v1/today", headers=auth).status_code == 200
    assert gateway.get("/api/v1/random", headers=auth).json()["visibility"] == "public"
    found = gateway.get("/api/v1/search?q=caesar", headers=auth)
    assert found.status_code == 200
    assert {item["path"] for item in found.json()} >= {CAESAR}
    assert gateway.get("/api/v1/search", headers=auth).status_code == 400

    near = gateway.get(f"/api/v1/graph/neighbors{CAESAR}", headers=auth)
    assert near.status_code == 200
    assert all("created_by" not in item for item in near.json())

    stats = gateway.get("/api/v1/stats", headers=auth)
    assert stats.status_code == 200
    assert stats.json() == {"total_nodes": 7, "date_range": {"min_year": -49, "max_year": 1989}}

    assert gateway.get("/api/v1/moments?limit=0", headers=auth).status_code == 400
    assert gateway.get("/api/v1/moments?status=nope", headers=auth).status_code == 400


def test_private_moment_invisible_through_every_route(
    gateway: Any, auth: Any, clockchain_peer: Any
) -> None:
    """The caller is not PRIVATE_OWNER_A/B: no route shows their private moments.

    Real Clockchain filters /today and /random to public (upstreams.md B4); the peer is switched
    to leak private moments through both, with one dated today, so what keeps them out is the
    gateway's own filter, not the peer's."""
    private_today = clockchain_peer.add_private_moment_today()
    clockchain_peer.leak_private_summaries = True
    key = {"X-Service-Key": clockchain_peer.service_key}
    with httpx.Client(base_url=clockchain_peer.url, trust_env=False) as direct:
        upstream_today = direct.get("/api/v1/today", headers=key).json()
        assert private_today in [e["path"] for e in upstream_today["events"]]  # the peer leaks
        drawn = {direct.get("/api/v1/random", headers=key).json()["path"] for _ in range(60)}
        assert {PRIVATE_CAESAR, PRIVATE_MOON, private_today} <= drawn
    clockchain_peer.reset_requests()

    seen: list[str] = []
    for url in (
        "/api/v1/moments?limit=100",
        "/api/v1/moments?limit=100&q=private",
        f"/api/v1/moments{CAESAR}",
        f"/api/v1/moments{MOON}",
        "/api/v1/browse",
        "/api/v1/browse/-44/march",
        "/api/v1/browse/1969/july",
        "/api/v1/today",
        "/api/v1/search?q=private",
        "/api/v1/search?q=%25",
        f"/api/v1/graph/neighbors{CAESAR}",
        f"/api/v1/graph/neighbors{MOON}",
        "/api/v1/stats",
    ):
        response = gateway.get(url, headers=auth)
        assert response.status_code == 200, url
        seen.append(response.text)
    randoms = [gateway.get("/api/v1/random", headers=auth) for _ in range(30)]
    seen.extend(r.text for r in randoms)
    # The gateway's random retries a non-public draw; 30 calls reach the upstream's private ones.
    drawn_upstream = len(clockchain_peer.requests_to("/api/v1/random"))
    assert drawn_upstream > 30, "no private moment was drawn upstream: the check could not fail"
    for response in randoms:
        assert response.status_code in (200, 404), response.text
        if response.status_code == 200:
            assert response.json()["visibility"] == "public"
    text = "\n".join(seen)
    for secret in (
        PRIVATE_CAESAR,
        PRIVATE_MOON,
        private_today,
        "private-launch-day-diary",
        "brutus-private",
        "private-diary-entry-of-today",
    ):
        assert secret not in text
    assert "Brutus's private letter" not in text and PRIVATE_OWNER_A not in text
    assert "Private diary entry of today" not in text
    assert '"17"' not in gateway.get("/api/v1/browse/-44/march", headers=auth).text

    for url in (
        f"/api/v1/moments{PRIVATE_CAESAR}",
        f"/api/v1/moments{private_today}",
        f"/api/v1/graph/neighbors{PRIVATE_CAESAR}",
        f"/api/v1/graph/neighbors{PRIVATE_MOON}",
    ):
        hidden = gateway.get(url, headers=auth)
        assert hidden.status_code == 404, url
        assert PRIVATE_CAESAR not in hidden.text and private_today not in hidden.text


def test_private_moment_visible_to_its_creator(
    gateway: Any, clockchain_peer: Any, flash_peer: Any
) -> None:
    from accounts.models import User
    from accounts.services import session_create

    owner = User.objects.create_user(
        username="auth0|owner", auth0_sub="auth0|owner", flash_user_id=PRIVATE_OWNER_A
    )
    _, token = session_create(user=owner)
    headers = {"Authorization": f"Bearer {token}"}
    detail = gateway.get(f"/api/v1/moments{PRIVATE_CAESAR}", headers=headers)
    assert detail.status_code == 200
    assert detail.json()["visibility"] == "private" and "created_by" not in detail.json()
    # Its edge to the public Caesar moment is kept.
    assert [e["target"] for e in detail.json()["edges"]] == [CAESAR]
    near = gateway.get(f"/api/v1/graph/neighbors{PRIVATE_CAESAR}", headers=headers)
    assert near.status_code == 200 and [n["path"] for n in near.json()] == [CAESAR]
    assert gateway.get(f"/api/v1/moments{PRIVATE_MOON}", headers=headers).status_code == 404


def test_public_detail_reads_never_send_the_key(
    gateway: Any, auth: Any, clockchain_peer: Any
) -> None:
    """A public read goes out without the key; the keyed read (after a 404) only ever serves
    the node's creator, so another caller still gets 404."""
    assert gateway.get(f"/api/v1/moments{CAESAR}", headers=auth).status_code == 200
    details = clockchain_peer.requests_to("/api/v1/moments/")
    assert len(details) == 1 and "x-service-key" not in details[0].headers
    assert gateway.get(f"/api/v1/moments{PRIVATE_CAESAR}", headers=auth).status_code == 404


def test_public_reads_are_cached(gateway: Any, auth: Any, clockchain_peer: Any) -> None:
    for _ in range(3):
        assert gateway.get("/api/v1/moments?limit=5", headers=auth).status_code == 200
    assert len(clockchain_peer.requests_to("/api/v1/moments")) == 1


def test_clockchain_429_becomes_503_with_retry_after(
    gateway: Any, auth: Any, clockchain_peer: Any
) -> None:
    clockchain_peer.rate_limit_public = 1
    assert gateway.get("/api/v1/moments?limit=1", headers=auth).status_code == 200
    limited = gateway.get("/api/v1/moments?limit=2", headers=auth)
    assert limited.status_code == 503
    assert limited.json()["code"] == "upstream_rate_limited"
    assert int(limited.headers["Retry-After"]) > 0


def test_clockchain_errors_map_to_json(gateway: Any, auth: Any, clockchain_peer: Any) -> None:
    clockchain_peer.fail_next = 1
    failed = gateway.get("/api/v1/today", headers=auth)
    assert failed.status_code == 502 and failed.json()["code"] == "upstream_error"
    assert "Internal Server Error" not in failed.text

    missing = gateway.get("/api/v1/moments/1/2/3", headers=auth)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"

    clockchain_peer.service_key = "rotated"
    refused = gateway.get("/api/v1/browse", headers=auth)
    assert refused.status_code == 502 and refused.json()["code"] == "upstream_error"


def test_flash_slow_is_504_and_down_is_502(
    gateway: Any, auth: Any, flash_peer: Any, settings: Any
) -> None:
    import time

    settings.UPSTREAM_READ_TIMEOUT = 0.3
    flash_peer.delay = 2
    started = time.monotonic()
    slow = gateway.get("/api/v1/credits/balance", headers=auth)
    assert slow.status_code == 504 and slow.json()["code"] == "upstream_timeout"
    assert time.monotonic() - started < 1.5
    flash_peer.delay = 0

    flash_peer.fail_next = 1
    broken = gateway.get("/api/v1/credits/balance", headers=auth)
    assert broken.status_code == 502 and broken.json()["code"] == "upstream_error"

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings.FLASH_URL = f"http://127.0.0.1:{closed_port}"
    down = gateway.get("/api/v1/credits/balance", headers=auth)
    assert down.status_code == 502 and down.json()["code"] == "upstream_unavailable"
    assert down.headers["content-type"].startswith("application/json")


def test_wrong_method_is_405_json(gateway: Any, auth: Any, flash_peer: Any) -> None:
    response = gateway.post("/api/v1/credits/balance", headers=auth)
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    assert flash_peer.requests == []
