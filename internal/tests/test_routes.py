"""The three internal routes, in-process: billing status, key verification, credit pre-checks.
(tests/reliability/test_internal_api.py drives them through the production server.)"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from django.test import Client
from django.utils import timezone

from accounts.models import Tier, User
from apikeys.services import key_revoke, key_roll
from relay.services import release, reserve


def _status(client: Client, identifier: str, service_headers: dict[str, Any]) -> Any:
    return client.get("/internal/billing/status", HTTP_X_USER_ID=identifier, **service_headers)


def _verify(client: Client, service_headers: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = client.post(
        "/internal/keys/verify", data=body, content_type="application/json", **service_headers
    )
    assert response.status_code == 200, response.content
    return dict(response.json())


# --- GET /internal/billing/status


def test_status_names_the_user_three_ways(client: Client, user: Any, service_headers: Any):
    answers = [
        _status(client, identifier, service_headers)
        for identifier in (str(user.pk), user.auth0_sub, user.flash_user_id)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == answers[1].json() == answers[2].json()
    assert answers[0].json() == {
        "user_id": str(user.pk),
        "subscription_tier": "free",
        "status": "none",
        "status_source": "none",
        "hd_access": False,
        "key_tier": "free",
        "monthly_credits": 0,
        "current_period_end": None,
        "cancel_at_period_end": False,
        "stripe_status": None,
    }


def test_status_of_a_staff_set_plan(
    client: Client, user: Any, service_headers: Any, catalogue: Any
):
    User.objects.filter(pk=user.pk).update(
        plan="api_pro", plan_hd_access=True, plan_key_tier=Tier.PRO, tier=Tier.PRO
    )
    body = _status(client, str(user.pk), service_headers).json()
    assert body["subscription_tier"] == "api_pro" and body["status"] == "active"
    assert body["status_source"] == "staff" and body["hd_access"] is True
    assert body["key_tier"] == "pro" and body["monthly_credits"] == 1000


def test_unknown_deleted_and_malformed_users(client: Client, user: Any, service_headers: Any):
    for identifier in ("999999", "auth0|nobody", "no-such-flash-id", "9" * 40):
        response = _status(client, identifier, service_headers)
        assert response.status_code == 404, identifier
        assert response.json()["code"] == "user_not_found"
    User.objects.filter(pk=user.pk).update(deleted_at=timezone.now())
    assert _status(client, str(user.pk), service_headers).status_code == 404

    missing = client.get("/internal/billing/status", **service_headers)
    assert missing.status_code == 400 and missing.json()["code"] == "user_id_required"
    too_long = _status(client, "x" * 300, service_headers)
    assert too_long.status_code == 400 and too_long.json()["code"] == "invalid_user_id"


# --- POST /internal/keys/verify


def test_a_valid_key_with_owner_tier_scopes_and_limits(
    client: Client, user: Any, make_key: Any, service_headers: Any
):
    key, raw = make_key(user, name="partner")
    answer = _verify(client, service_headers, key=raw, scope="read", route="/mcp/tools/search")

    assert answer["valid"] is True and answer["code"] == "valid"
    assert answer["key"] == {
        "id": key.pk,
        "prefix": key.prefix,
        "name": "partner",
        "mode": "live",
        "tier": "free",
        "expires_at": None,
    }
    assert answer["owner"] == {
        "user_id": str(user.pk),
        "auth0_sub": user.auth0_sub,
        "flash_user_id": user.flash_user_id,
        "plan": "free",
    }
    assert answer["tier"] == "free"
    assert set(answer["scopes"]) >= {"read", "generate"}
    limit = answer["rate_limit"]
    assert limit["charged"] is False
    assert limit["minute"]["limit"] == 10 and limit["minute"]["used"] == 0
    assert limit["day"] == {**limit["day"], "limit": 100, "used": 0, "remaining": 100}


def test_charging_counts_against_the_same_windows_as_the_gateway(
    client: Client, user: Any, make_key: Any, service_headers: Any
):
    _, raw = make_key(user, rate_limit_per_minute=3)
    # One call through the public API counts first.
    assert client.get("/api/v1/keys", HTTP_X_API_KEY=raw).status_code == 200

    first = _verify(client, service_headers, key=raw, charge=True)
    assert first["valid"] and first["rate_limit"]["charged"] is True
    assert first["rate_limit"]["minute"]["used"] == 2
    assert first["rate_limit"]["minute"]["remaining"] == 1
    second = _verify(client, service_headers, key=raw, charge=True)
    assert second["rate_limit"]["minute"]["remaining"] == 0

    over = _verify(client, service_headers, key=raw, charge=True)
    assert over["valid"] is False and over["code"] == "rate_limited"
    assert over["retry_after"] >= 1 and over["rate_limit"]["minute"]["used"] == 3
    # ... and the gateway agrees.
    assert client.get("/api/v1/keys", HTTP_X_API_KEY=raw).status_code == 429
    # Without charge nothing is counted.
    peek = _verify(client, service_headers, key=raw)
    assert peek["rate_limit"]["minute"]["used"] == 3


def test_revoked_rolled_expired_and_malformed_keys_are_invalid_at_once(
    client: Client, user: Any, make_key: Any, service_headers: Any
):
    revoked, revoked_raw = make_key(user, name="revoked")
    rolled, rolled_raw = make_key(user, name="rolled")
    expired, expired_raw = make_key(user, name="expired")
    for raw in (revoked_raw, rolled_raw, expired_raw):
        assert _verify(client, service_headers, key=raw)["valid"] is True  # cached now

    key_revoke(user=user, key_id=revoked.pk)
    _, new_raw = key_roll(user=user, key_id=rolled.pk, grace_seconds=0)
    type(expired).objects.filter(pk=expired.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    from apikeys.lookup import key_cache_forget

    key_cache_forget(digest=expired.key_digest)  # as the admin's save does

    for raw in (revoked_raw, rolled_raw, expired_raw, "tp_live_garbage", "x" * 20):
        assert _verify(client, service_headers, key=raw) == {
            "valid": False,
            "code": "invalid_api_key",
        }
    assert _verify(client, service_headers, key=new_raw)["valid"] is True


def test_a_scope_the_key_lacks(client: Client, user: Any, make_key: Any, service_headers: Any):
    _, raw = make_key(user)
    answer = _verify(client, service_headers, key=raw, scope="admin", charge=True)
    assert answer["valid"] is False and answer["code"] == "scope_required"
    assert answer["rate_limit"]["charged"] is False and answer["rate_limit"]["minute"]["used"] == 0


def test_bad_verify_bodies_are_400(client: Client, service_headers: Any, db: Any):
    for body in (b"{}", b'{"key": 5}', b'{"key": "' + b"a" * 200 + b'"}', b"[", b'"x"'):
        response = client.post(
            "/internal/keys/verify", data=body, content_type="application/json", **service_headers
        )
        assert response.status_code == 400, body
        assert set(response.json()) >= {"detail", "code"}


def test_the_key_is_never_logged(client: Client, user: Any, make_key: Any, service_headers: Any):
    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(f"{record.getMessage()} {record.args!r} {record.__dict__!r}")

    _, raw = make_key(user)
    kept = Keep()
    root = logging.getLogger()
    level = root.level
    root.addHandler(kept)
    root.setLevel(logging.DEBUG)
    try:
        _verify(client, service_headers, key=raw, charge=True)
        _verify(client, service_headers, key=raw[:-1] + ("A" if raw[-1] != "A" else "B"))
    finally:
        root.removeHandler(kept)
        root.setLevel(level)
    text = "\n".join(kept.lines)
    assert "/internal/keys/verify" in text  # the request log line was kept
    assert raw not in text and raw[:-6] not in text


# --- GET /internal/credits/check


def test_credits_check_reads_flash_and_the_relays_holds(
    client: Client, user: Any, flash_peer: Any, service_headers: Any
):
    def check(cost: Any, identifier: str = "") -> Any:
        query = urlencode({"user_id": identifier or user.auth0_sub, "cost": cost})
        return client.get(f"/internal/credits/check?{query}", **service_headers)

    enough = check(50)
    assert enough.status_code == 200
    assert enough.json() == {
        "sufficient": True,
        "balance": 50,
        "reserved": 0,
        "available": 50,
        "cost": 50,
        "user_id": str(user.pk),
    }
    assert check(51).json()["sufficient"] is False
    assert check(10, user.flash_user_id).json()["sufficient"] is True

    # A generation in flight (the relay's own reservation, run as the relay runs it: awaited).
    async_to_sync(reserve)(flash_user_id=user.flash_user_id, cost=45, balance=50)
    try:
        held = check(10).json()
        assert held["sufficient"] is False and held["reserved"] == 45 and held["available"] == 5
    finally:
        async_to_sync(release)(flash_user_id=user.flash_user_id, cost=45)
    # Reading spends nothing.
    assert flash_peer.user_balance(user.flash_user_id) == 50


def test_credits_check_errors(client: Client, user: Any, flash_peer: Any, service_headers: Any):
    for query in (
        {"user_id": "1"},
        {"cost": 5},
        {"user_id": "1", "cost": -1},
        {"user_id": "1", "cost": "x"},
    ):
        response = client.get(f"/internal/credits/check?{urlencode(query)}", **service_headers)
        assert response.status_code == 400, query
    unknown = client.get("/internal/credits/check?user_id=auth0|nobody&cost=1", **service_headers)
    assert unknown.status_code == 404 and unknown.json()["code"] == "user_not_found"
    User.objects.filter(pk=user.pk).update(flash_user_id="")
    no_account = client.get(f"/internal/credits/check?user_id={user.pk}&cost=1", **service_headers)
    assert no_account.status_code == 404
    assert no_account.json()["code"] == "credit_account_not_found"


def test_credits_check_when_flash_is_down(
    client: Client, user: Any, settings: Any, service_headers: Any
):
    settings.FLASH_URL = "http://127.0.0.1:9"  # nothing listens there
    response = client.get(f"/internal/credits/check?user_id={user.pk}&cost=1", **service_headers)
    assert response.status_code in (502, 503)
    assert set(response.json()) >= {"detail", "code"}
