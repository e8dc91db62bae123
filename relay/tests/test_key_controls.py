"""Spend controls on API keys (issue 18), over HTTP against the in-process gateway and the contract
peers: scopes (403 `scope_required` before the limiter, any credit hold or upstream call), the
monthly credit budget (402 `budget_exhausted` before Flash, settled and refunded), expiry, and
origin/address lists (403 `key_not_allowed_here`). The same rules through the production server
on PostgreSQL + Redis: tests/reliability/test_key_spend_controls.py."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apikeys.models import APIKey, KeySpend

pytestmark = pytest.mark.django_db(transaction=True)

GENERATE = "/api/v1/generate"
HYPER = {"query": "The fall of Rome", "preset": "hyper"}  # 5 credits on the peer


def _flash_calls(flash_peer: Any) -> list[Any]:
    return [r for r in flash_peer.requests if r.path.startswith("/api/v1/")]


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code, body
    return dict(body)


# --- Scopes


def test_a_call_outside_the_key_scopes_is_refused_before_limiter_hold_and_flash(
    gateway: Any, make_key: Any, user: Any, flash_peer: Any, usage: Any
) -> None:
    _, raw = make_key(user, scopes=["read"], rate_limit_per_minute=2)
    headers = {"X-API-Key": raw}
    flash_peer.reset_requests()

    for _ in range(3):  # more than the key's 2 per minute: none of them is charged
        body = _error(gateway.post(GENERATE, json=HYPER, headers=headers), 403, "scope_required")
        assert body["scope"] == "generate" and "`generate`" in body["detail"]
    assert _flash_calls(flash_peer) == []  # not even the balance or the cost table
    assert KeySpend.objects.count() == 0
    assert usage() == []

    # The limiter never counted the refusals: both of the minute's calls are still there.
    assert gateway.get("/api/v1/credits/balance", headers=headers).status_code == 200
    assert gateway.get("/api/v1/credits/balance", headers=headers).status_code == 200
    assert gateway.get("/api/v1/credits/balance", headers=headers).status_code == 429


def test_each_route_needs_its_scope(gateway: Any, make_key: Any, user: Any) -> None:
    _, raw = make_key(user, scopes=["generate"])
    headers = {"X-API-Key": raw}
    refusals = [
        (gateway.get("/api/v1/browse", headers=headers), "read"),
        (gateway.get("/api/v1/credits/costs", headers=headers), "read"),
        (gateway.get("/api/v1/usage", headers=headers), "read"),
        (
            gateway.patch(
                "/api/v1/timepoints/3f2b8f1e-4a8e-4a43-9a8c-2f6d4f0d8f11/visibility",
                json={"visibility": "public"},
                headers=headers,
            ),
            "publish",
        ),
        (gateway.get("/api/v1/keys", headers=headers), "keys"),
        (gateway.post("/api/v1/keys", json={"name": "more"}, headers=headers), "keys"),
        (gateway.post("/api/v1/auth/logout?all=true", headers=headers), "keys"),
        (gateway.post("/api/v1/billing/portal", headers=headers), "billing"),
    ]
    for response, scope in refusals:
        assert _error(response, 403, "scope_required")["scope"] == scope
    assert APIKey.objects.filter(user=user).count() == 1  # the key could not mint another


def test_new_keys_get_read_generate_publish_and_keys_scope_only_when_asked(
    gateway: Any, auth: Any, user: Any
) -> None:
    plain = gateway.post("/api/v1/keys", json={"name": "ci"}, headers=auth)
    assert plain.status_code == 201, plain.text
    assert plain.json()["scopes"] == ["read", "generate", "publish"]
    _error(
        gateway.get("/api/v1/keys", headers={"X-API-Key": plain.json()["key"]}),
        403,
        "scope_required",
    )

    admin = gateway.post(
        "/api/v1/keys", json={"name": "deploy bot", "scopes": ["keys", "read"]}, headers=auth
    )
    assert admin.status_code == 201, admin.text
    assert admin.json()["scopes"] == ["read", "keys"]
    listing = gateway.get("/api/v1/keys", headers={"X-API-Key": admin.json()["key"]})
    assert listing.status_code == 200 and len(listing.json()) == 2

    for bad in ([], ["read", "admin"], "read"):
        response = gateway.post("/api/v1/keys", json={"name": "x", "scopes": bad}, headers=auth)
        _error(response, 400, "invalid_request")


def test_the_owner_edits_scopes_and_it_applies_at_once(
    gateway: Any, auth: Any, make_key: Any, user: Any
) -> None:
    key, raw = make_key(user, scopes=["read"])
    assert gateway.get("/api/v1/browse", headers={"X-API-Key": raw}).status_code == 200
    changed = gateway.patch(f"/api/v1/keys/{key.pk}", json={"scopes": ["generate"]}, headers=auth)
    assert changed.status_code == 200, changed.text
    assert changed.json()["scopes"] == ["generate"]
    _error(gateway.get("/api/v1/browse", headers={"X-API-Key": raw}), 403, "scope_required")


def test_sessions_keep_every_scope(gateway: Any, auth: Any) -> None:
    assert gateway.get("/api/v1/keys", headers=auth).status_code == 200
    assert gateway.get("/api/v1/browse", headers=auth).status_code == 200
    assert gateway.post(GENERATE, json=HYPER, headers=auth).status_code == 200


# --- Budgets


def test_a_generation_past_the_monthly_budget_is_402_before_flash(
    gateway: Any, auth: Any, make_key: Any, user: Any, flash_peer: Any
) -> None:
    key, raw = make_key(user, monthly_credit_budget=12)
    headers = {"X-API-Key": raw}
    assert gateway.post(GENERATE, json=HYPER, headers=headers).status_code == 200
    assert gateway.post(GENERATE, json=HYPER, headers=headers).status_code == 200
    flash_peer.reset_requests()

    body = _error(gateway.post(GENERATE, json=HYPER, headers=headers), 402, "budget_exhausted")
    assert (body["budget"], body["spent"], body["cost"]) == (12, 10, 5)
    assert _flash_calls(flash_peer) == []  # not even the balance read
    assert flash_peer.user_balance(user.flash_user_id) == 40

    detail = gateway.get(f"/api/v1/keys/{key.pk}", headers=auth).json()
    assert detail["budget"]["spent"] == 10 and detail["budget"]["remaining"] == 2
    assert detail["budget"]["budget"] == 12
    usage = gateway.get(f"/api/v1/keys/{key.pk}/usage", headers=auth).json()
    assert usage["budget"]["spent"] == 10

    # Raising the budget lets the key go on; the session is never bound by a key's budget.
    gateway.patch(f"/api/v1/keys/{key.pk}", json={"monthly_credit_budget": 15}, headers=auth)
    assert gateway.post(GENERATE, json=HYPER, headers=headers).status_code == 200
    assert gateway.post(GENERATE, json=HYPER, headers=auth).status_code == 200


def test_refunds_and_uncharged_errors_give_the_budget_back(
    gateway: Any, auth: Any, make_key: Any, user: Any, flash_peer: Any
) -> None:
    key, raw = make_key(user, monthly_credit_budget=5)
    headers = {"X-API-Key": raw}

    flash_peer.generation_outcome = "failed"  # charged by Flash, refunded by the gateway
    assert gateway.post(GENERATE, json=HYPER, headers=headers).json()["status"] == "failed"
    flash_peer.generation_outcome = "error"  # Flash answers 500 and refunds its own charge
    assert gateway.post(GENERATE, json=HYPER, headers=headers).status_code >= 500
    flash_peer.generation_outcome = "completed"

    spends = list(KeySpend.objects.filter(api_key=key).order_by("id"))
    assert [(s.amount, s.refunded_at is not None) for s in spends] == [(5, True), (0, False)]
    detail = gateway.get(f"/api/v1/keys/{key.pk}", headers=auth).json()
    assert detail["budget"]["spent"] == 0

    # The whole budget is still there for a generation that succeeds.
    assert gateway.post(GENERATE, json=HYPER, headers=headers).status_code == 200
    _error(gateway.post(GENERATE, json=HYPER, headers=headers), 402, "budget_exhausted")


def test_a_refused_credit_reservation_drops_the_budget_hold(
    gateway: Any, make_key: Any, user: Any, flash_peer: Any
) -> None:
    key, raw = make_key(user, monthly_credit_budget=100)
    flash_peer.set_balance(user.flash_user_id, 3)
    _error(
        gateway.post(GENERATE, json=HYPER, headers={"X-API-Key": raw}), 402, "insufficient_credits"
    )
    assert KeySpend.objects.filter(api_key=key).count() == 0


def test_a_streamed_generation_counts_against_the_budget(
    gateway: Any, make_key: Any, user: Any
) -> None:
    key, raw = make_key(user, monthly_credit_budget=5)
    headers = {"X-API-Key": raw}
    with gateway.stream("POST", f"{GENERATE}/stream", json=HYPER, headers=headers) as response:
        assert response.status_code == 200
        assert b'"done"' in response.read()
    spend = KeySpend.objects.get(api_key=key)
    assert spend.amount == 5 and spend.settled_at is not None
    _error(gateway.post(f"{GENERATE}/stream", json=HYPER, headers=headers), 402, "budget_exhausted")


def test_a_key_without_budget_records_its_spend_and_a_budget_set_later_holds_at_once(
    gateway: Any, make_key: Any, user: Any
) -> None:
    key, raw = make_key(user)
    headers = {"X-API-Key": raw}
    assert gateway.post(GENERATE, json=HYPER, headers=headers).status_code == 200
    assert [s.amount for s in KeySpend.objects.filter(api_key=key)] == [5]

    # Set behind the worker's back: its key cache still says "no budget", the database decides.
    APIKey.objects.filter(pk=key.pk).update(monthly_credit_budget=7)
    body = _error(gateway.post(GENERATE, json=HYPER, headers=headers), 402, "budget_exhausted")
    assert (body["budget"], body["spent"], body["cost"]) == (7, 5, 5)
    assert [s.amount for s in KeySpend.objects.filter(api_key=key)] == [5]


def test_test_keys_spend_nothing_against_a_budget(gateway: Any, make_key: Any, user: Any) -> None:
    _, raw = make_key(user, mode="test", monthly_credit_budget=0)
    response = gateway.post(GENERATE, json=HYPER, headers={"X-API-Key": raw})
    assert response.status_code == 200 and response.json()["test_mode"] is True
    assert KeySpend.objects.count() == 0


# --- Expiry


def test_expiry_at_creation_reminders_and_refusal(gateway: Any, auth: Any, user: Any) -> None:
    soon = (timezone.now() + timedelta(days=3)).isoformat()
    later = (timezone.now() + timedelta(days=30)).isoformat()
    first = gateway.post("/api/v1/keys", json={"name": "soon", "expires_at": soon}, headers=auth)
    second = gateway.post("/api/v1/keys", json={"name": "later", "expires_at": later}, headers=auth)
    assert first.status_code == second.status_code == 201
    assert first.json()["expires_soon"] is True and second.json()["expires_soon"] is False

    expiring = gateway.get("/api/v1/keys?expiring=soon", headers=auth).json()
    assert [k["name"] for k in expiring] == ["soon"]
    _error(gateway.get("/api/v1/keys?expiring=later", headers=auth), 400, "invalid_request")
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    _error(
        gateway.post("/api/v1/keys", json={"name": "x", "expires_at": past}, headers=auth),
        400,
        "invalid_request",
    )

    # A key used (and cached by the worker) a moment before its expiry stops at the expiry.
    ends = timezone.now() + timedelta(seconds=2)
    short = gateway.post(
        "/api/v1/keys", json={"name": "short", "expires_at": ends.isoformat()}, headers=auth
    )
    raw = short.json()["key"]
    assert gateway.get("/api/v1/browse", headers={"X-API-Key": raw}).status_code == 200
    time.sleep(max(0.0, (ends - timezone.now()).total_seconds()) + 0.2)
    _error(gateway.get("/api/v1/browse", headers={"X-API-Key": raw}), 401, "invalid_api_key")


def test_the_owner_changes_the_expiry_of_a_working_key_only(
    gateway: Any, auth: Any, make_key: Any, user: Any
) -> None:
    key, raw = make_key(user)
    url = f"/api/v1/keys/{key.pk}"
    soon = timezone.now() + timedelta(days=2)
    edited = gateway.patch(url, json={"expires_at": soon.isoformat()}, headers=auth)
    assert edited.status_code == 200, edited.text
    assert edited.json()["expires_soon"] is True
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    _error(gateway.patch(url, json={"expires_at": past}, headers=auth), 400, "invalid_request")
    cleared = gateway.patch(url, json={"expires_at": None}, headers=auth).json()
    assert (cleared["expires_at"], cleared["expires_soon"]) == (None, False)

    # Ended now: the key stops at once (the stop marker), and no edit brings it back.
    ends = timezone.now() + timedelta(seconds=1)
    gateway.patch(url, json={"expires_at": ends.isoformat()}, headers=auth)
    time.sleep(max(0.0, (ends - timezone.now()).total_seconds()) + 0.2)
    _error(gateway.get("/api/v1/browse", headers={"X-API-Key": raw}), 401, "invalid_api_key")
    _error(gateway.patch(url, json={"expires_at": None}, headers=auth), 409, "key_not_active")
    # A rolled key's grace period is not the owner's to stretch.
    other, _ = make_key(user)
    gateway.post(f"/api/v1/keys/{other.pk}/roll", json={"grace_seconds": 60}, headers=auth)
    later = (timezone.now() + timedelta(days=3)).isoformat()
    _error(
        gateway.patch(f"/api/v1/keys/{other.pk}", json={"expires_at": later}, headers=auth),
        409,
        "key_not_active",
    )


# --- Origins and addresses


def test_origin_list(gateway: Any, auth: Any, make_key: Any, user: Any) -> None:
    key, raw = make_key(user)
    edited = gateway.patch(
        f"/api/v1/keys/{key.pk}",
        json={"allowed_origins": ["https://App.Example.com/"]},
        headers=auth,
    )
    assert edited.json()["allowed_origins"] == ["https://app.example.com"]
    ok = {"X-API-Key": raw, "Origin": "https://app.example.com"}
    assert gateway.get("/api/v1/browse", headers=ok).status_code == 200
    for origin in ("https://evil.example.com", None):
        headers = {"X-API-Key": raw, **({"Origin": origin} if origin else {})}
        _error(gateway.get("/api/v1/browse", headers=headers), 403, "key_not_allowed_here")
    bad = gateway.patch(
        f"/api/v1/keys/{key.pk}", json={"allowed_origins": ["app.example.com/x"]}, headers=auth
    )
    _error(bad, 400, "invalid_request")


def test_address_list(gateway: Any, auth: Any, make_key: Any, user: Any) -> None:
    key, raw = make_key(user)
    headers = {"X-API-Key": raw}
    gateway.patch(f"/api/v1/keys/{key.pk}", json={"allowed_cidrs": ["10.0.0.0/8"]}, headers=auth)
    _error(gateway.get("/api/v1/browse", headers=headers), 403, "key_not_allowed_here")
    edited = gateway.patch(
        f"/api/v1/keys/{key.pk}",
        json={"allowed_cidrs": ["10.0.0.0/8", "127.0.0.1", "::1"]},
        headers=auth,
    )
    assert edited.json()["allowed_cidrs"] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    assert gateway.get("/api/v1/browse", headers=headers).status_code == 200
    bad = gateway.patch(
        f"/api/v1/keys/{key.pk}", json={"allowed_cidrs": ["10.0.0/33"]}, headers=auth
    )
    _error(bad, 400, "invalid_request")


# --- The keys API


def test_one_key_by_id_and_edits_only_for_its_owner(
    gateway: Any, auth: Any, make_key: Any, user: Any, other_user: Any
) -> None:
    mine, _ = make_key(user, name="mine")
    theirs, _ = make_key(other_user, name="theirs")
    got = gateway.get(f"/api/v1/keys/{mine.pk}", headers=auth)
    assert got.status_code == 200 and got.json()["name"] == "mine"
    assert "key" not in got.json() and "key_digest" not in got.json()
    _error(gateway.get(f"/api/v1/keys/{theirs.pk}", headers=auth), 404, "key_not_found")
    patch = gateway.patch(f"/api/v1/keys/{theirs.pk}", json={"name": "x"}, headers=auth)
    _error(patch, 404, "key_not_found")
    for body in ({"tier": "enterprise"}, {"monthly_credit_budget": -1}, {"mode": "test"}):
        response = gateway.patch(f"/api/v1/keys/{mine.pk}", json=body, headers=auth)
        _error(response, 400, "invalid_request")
    renamed = gateway.patch(f"/api/v1/keys/{mine.pk}", json={"name": "prod"}, headers=auth)
    assert renamed.json()["name"] == "prod" and renamed.json()["scopes"] == mine.scopes
