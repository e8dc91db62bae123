"""The keys admin as staff use it: the owner's controls (scopes, budget, expiry, origins,
networks) seen and changed with the keys API's checks, the month's spend on the list and the
page, and a change that takes effect at once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.utils import timezone

from accounts.models import User
from accounts.tests.staff import staff_signed_in
from apikeys.models import APIKey, KeySpend, month_start
from apikeys.services import key_create

pytestmark = pytest.mark.django_db


def _form(key: APIKey, **changes: Any) -> dict[str, Any]:
    """The change form as the admin page posts it, with `changes` typed in."""
    data: dict[str, Any] = {
        "name": key.name,
        "user": key.user_id,
        "tier": key.tier,
        "scopes": list(key.scopes),
        "monthly_credit_budget": key.monthly_credit_budget or "",
        "expires_at_0": "",
        "expires_at_1": "",
        "allowed_origins": "\n".join(key.allowed_origins),
        "allowed_cidrs": "\n".join(key.allowed_cidrs),
        "rate_limit_per_minute": "",
        "rate_limit_per_day": "",
        "concurrency_limit": "",
        "is_active": "on",
        "revoked_at_0": "",
        "revoked_at_1": "",
    }
    data.update(changes)
    return data


def _spend(key: APIKey, request_id: str, amount: int, **fields: Any) -> None:
    KeySpend.objects.create(
        api_key=key, request_id=request_id, month=month_start(), amount=amount, **fields
    )


def test_staff_see_the_controls_and_the_month_spend(user: User) -> None:
    key, _ = key_create(
        user=user,
        name="partner",
        scopes=["read", "generate"],
        monthly_credit_budget=100,
        allowed_origins=["https://app.example.com"],
        allowed_cidrs=["203.0.113.0/24"],
    )
    _spend(key, "r1", 10)
    _spend(key, "r2", 5, refunded_at=timezone.now())  # refunded: not counted
    client, _ = staff_signed_in("support")

    listing = client.get("/admin/apikeys/apikey/").content.decode()
    assert "read, generate" in listing
    assert "10 of 100 credits in" in listing and "(90 left)" in listing

    page = client.get(f"/admin/apikeys/apikey/{key.pk}/change/").content.decode()
    assert "10 of 100 credits in" in page
    assert "https://app.example.com" in page and "203.0.113.0/24" in page
    assert "key_digest" not in page and key.key_digest not in page
    # Support staff only look: no save button, no add page for anybody.
    assert 'name="_save"' not in page
    assert client.get("/admin/apikeys/apikey/add/").status_code == 403


def test_staff_change_the_controls_with_the_api_checks(user: User) -> None:
    key, raw = key_create(user=user, name="partner", scopes=["read"])
    bearer = {"Authorization": f"Bearer {raw}"}
    refused = Client().get("/api/v1/keys", headers=bearer)
    assert (refused.status_code, refused.json()["code"]) == (403, "scope_required")
    client, staff = staff_signed_in("billing")
    url = f"/admin/apikeys/apikey/{key.pk}/change/"

    bad = client.post(
        url,
        _form(
            key,
            scopes=[],
            allowed_origins="https://ok.example.com\nftp://nope.example.com",
            allowed_cidrs="300.1.2.3/8",
            monthly_credit_budget="-1",
        ),
    )
    assert bad.status_code == 200  # the form again, with its errors
    page = bad.content.decode()
    assert "This field is required." in page  # no scope
    assert "is not an origin like https://app.example.com." in page
    assert "is not an IP network (CIDR)." in page
    assert "greater than or equal to 0" in page
    key.refresh_from_db()
    assert key.scopes == ["read"]

    saved = client.post(
        url,
        _form(
            key,
            scopes=["keys", "read"],
            monthly_credit_budget="250",
            allowed_origins="HTTPS://App.Example.com/, https://app.example.com",
            allowed_cidrs="198.51.100.7",
        ),
    )
    assert saved.status_code == 302, saved.content.decode()[-2000:]
    key.refresh_from_db()
    assert key.scopes == ["read", "keys"]  # canonical order
    assert key.monthly_credit_budget == 250
    assert key.allowed_origins == ["https://app.example.com"]
    assert key.allowed_cidrs == ["198.51.100.7/32"]
    assert LogEntry.objects.filter(user=staff, object_id=str(key.pk)).exists()
    # At once on this process: the key has the `keys` scope, from its origin and network only.
    browser = {**bearer, "Origin": "https://app.example.com"}
    allowed = Client(REMOTE_ADDR="198.51.100.7").get("/api/v1/keys", headers=browser)
    assert allowed.status_code == 200, allowed.content
    elsewhere = Client(REMOTE_ADDR="198.51.100.8").get("/api/v1/keys", headers=browser)
    assert elsewhere.json()["code"] == "key_not_allowed_here"

    # An expiry set by staff stops the key at once.
    past = timezone.now() - timedelta(minutes=1)
    client.post(
        url,
        _form(
            key,
            expires_at_0=past.strftime("%Y-%m-%d"),
            expires_at_1=past.strftime("%H:%M:%S"),
        ),
    )
    key.refresh_from_db()
    assert key.expires_at is not None and key.is_expired()
    stopped = Client(REMOTE_ADDR="198.51.100.7").get("/api/v1/keys", headers=browser)
    assert stopped.status_code == 401
