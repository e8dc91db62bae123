"""The portal's key pages with a key's spend controls (issue 18): scopes, a monthly credit budget,
an expiry day, allowed origins and networks on the create form and on a key's page; the list
shows the month's spend against the budget and flags keys expiring within 7 days and expired
ones. Bad input is an error next to its field, never an error page. In a real browser against
the production server: tests/browser/test_key_controls.py."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apikeys.models import APIKey, KeySpend, month_start
from apikeys.services import key_create, key_roll

pytestmark = pytest.mark.django_db

CONTROLS = {
    "name": "partner",
    "mode": "live",
    "scopes": ["read", "generate"],
    "monthly_credit_budget": "100",
    "expires_on": "",
    "allowed_origins": "",
    "allowed_cidrs": "",
}


def _today() -> Any:
    return timezone.now().astimezone(UTC).date()


def _end_of(day: Any) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)


def _text(response: Any) -> str:
    """The page's text without tags (an error sentence is not split by markup)."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode())))


def _spend(key: APIKey, amount: int, request_id: str) -> None:
    KeySpend.objects.create(api_key=key, request_id=request_id, month=month_start(), amount=amount)


def test_a_key_is_created_with_its_controls(portal_client: Client, user: Any) -> None:
    in_three_days = _today() + timedelta(days=3)
    created = portal_client.post(
        "/portal/keys/",
        {
            **CONTROLS,
            "expires_on": in_three_days.isoformat(),
            "allowed_origins": "https://App.example.com/\nhttps://admin.example.com",
            "allowed_cidrs": "203.0.113.0/24, 2001:db8::1",
        },
    )
    assert created.status_code == 200
    assert created["Cache-Control"] == "no-store"
    key = APIKey.objects.get(user=user)
    assert key.scopes == ["read", "generate"]
    assert key.monthly_credit_budget == 100
    assert key.expires_at == _end_of(in_three_days)  # it works through the chosen day
    assert key.allowed_origins == ["https://app.example.com", "https://admin.example.com"]
    assert key.allowed_cidrs == ["203.0.113.0/24", "2001:db8::1/128"]
    summary = _text(created)
    assert "Scopes: read, generate · monthly budget: 100 credits · stops" in summary

    listing = portal_client.get("/portal/keys/")
    page = listing.content.decode()
    # The rotation reminder names the key, its row is flagged, its month shows 0 of 100.
    reminder = page[page.index('id="expiring-keys"') : page.index("Create a key")]
    assert key.prefix in reminder
    row = page[page.index(f'data-key-prefix="{key.prefix}"') :]
    row = row[: row.index("</tr>")]
    assert 'class="expiring"' in page and "badge warn" in row
    assert "0 / 100" in row and "read, generate" in row


def test_bad_input_is_shown_on_the_form(portal_client: Client, user: Any) -> None:
    yesterday = _today() - timedelta(days=1)
    response = portal_client.post(
        "/portal/keys/",
        {
            **CONTROLS,
            "scopes": [],
            "monthly_credit_budget": "-5",
            "expires_on": yesterday.isoformat(),
            "allowed_origins": "ftp://files.example.com",
            "allowed_cidrs": "999.1.1.1",
        },
    )
    assert response.status_code == 200  # the form again, with every error next to its field
    text = _text(response)
    assert "This field is required." in text  # no scope chosen
    assert "greater than or equal to 0" in text
    assert "Choose today or a later day." in text
    assert "'ftp://files.example.com' is not an origin like https://app.example.com." in text
    assert "'999.1.1.1' is not an IP network (CIDR)." in text
    assert 'id="key-restrictions" open' in response.content.decode()  # its errors are visible
    for odd in (
        {"expires_on": "not a day"},
        {"expires_on": "9999-12-31"},
        {"scopes": ["read", "admin"]},
        {"monthly_credit_budget": "lots"},
        {"allowed_origins": "\n".join(f"https://a{n}.example.com" for n in range(30))},
        {"allowed_cidrs": "10.0.0.0/8 " * 2000},
    ):
        again = portal_client.post("/portal/keys/", {**CONTROLS, **odd})
        assert again.status_code == 200 and 'class="errorlist' in again.content.decode(), odd
    assert not APIKey.objects.exists()


def test_a_service_refusal_is_a_message_on_the_page(
    portal_client: Client, user: Any, settings: Any
) -> None:
    settings.MAX_LIVE_KEYS_PER_USER = 1
    key_create(user=user, name="first")
    refused = portal_client.post("/portal/keys/", CONTROLS)
    assert refused.status_code == 200
    assert "At most 1 live keys; revoke one first." in _text(refused)
    assert APIKey.objects.count() == 1


def test_the_key_page_shows_the_month_and_edits_the_controls(
    portal_client: Client, user: Any
) -> None:
    # An expiry set to the minute through the API stays as it is when its day is not changed.
    exact = timezone.now().replace(microsecond=0) + timedelta(days=20, minutes=7)
    key, raw = key_create(
        user=user,
        name="server",
        scopes=["read"],
        monthly_credit_budget=50,
        expires_at=exact,
        allowed_cidrs=["198.51.100.0/24"],
    )
    _spend(key, 20, "r1")
    url = f"/portal/keys/{key.pk}/"
    page = portal_client.get(url)
    assert page.status_code == 200
    text = _text(page)
    assert "20 / 50" in text and "30 left" in text
    html = page.content.decode()
    assert f'value="{exact.astimezone(UTC).date().isoformat()}"' in html
    assert "198.51.100.0/24</textarea>" in html

    saved = portal_client.post(
        url,
        {
            "name": "server (prod)",
            "scopes": ["read", "generate", "keys"],
            "monthly_credit_budget": "",
            "expires_on": exact.astimezone(UTC).date().isoformat(),
            "allowed_origins": "https://app.example.com",
            "allowed_cidrs": "",
        },
        follow=True,
    )
    assert "saved" in _text(saved)
    key.refresh_from_db()
    assert key.name == "server (prod)"
    assert key.scopes == ["read", "generate", "keys"]
    assert key.monthly_credit_budget is None
    assert key.expires_at == exact
    assert (key.allowed_origins, key.allowed_cidrs) == (["https://app.example.com"], [])
    # The key calls with its new scope (from its one origin) at once.
    headers = {"Authorization": f"Bearer {raw}", "Origin": "https://app.example.com"}
    assert Client().get("/api/v1/keys", headers=headers).status_code == 200

    # A new day: the key works through it; removing it removes the expiry.
    new_day = _today() + timedelta(days=2)
    portal_client.post(url, {**_edit_form(key), "expires_on": new_day.isoformat()})
    key.refresh_from_db()
    assert key.expires_at == _end_of(new_day)
    portal_client.post(url, {**_edit_form(key), "expires_on": ""})
    key.refresh_from_db()
    assert key.expires_at is None

    bad = portal_client.post(url, {**_edit_form(key), "allowed_cidrs": "my office"})
    assert bad.status_code == 200
    assert "'my' is not an IP network (CIDR)." in _text(bad)
    key.refresh_from_db()
    assert key.allowed_cidrs == []


def _edit_form(key: APIKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "scopes": key.scopes,
        "monthly_credit_budget": key.monthly_credit_budget or "",
        "expires_on": "",
        "allowed_origins": "\n".join(key.allowed_origins),
        "allowed_cidrs": "\n".join(key.allowed_cidrs),
    }


def test_a_rolled_key_keeps_its_grace_and_a_dead_key_cannot_change(
    portal_client: Client, user: Any
) -> None:
    key, _ = key_create(user=user, name="old")
    key_roll(user=user, key_id=key.pk, grace_seconds=3600)
    key.refresh_from_db()
    grace_end = key.expires_at
    assert grace_end is not None
    page = portal_client.get(f"/portal/keys/{key.pk}/").content.decode()
    assert "Rolled: it stops when its grace period ends." in page
    later = (_today() + timedelta(days=5)).isoformat()
    portal_client.post(f"/portal/keys/{key.pk}/", {**_edit_form(key), "expires_on": later})
    key.refresh_from_db()
    assert key.expires_at == grace_end  # the disabled field is not taken from the request

    revoked, _ = key_create(user=user, name="gone")
    revoked.revoked_at, revoked.is_active = timezone.now(), False
    revoked.save()
    dead = portal_client.get(f"/portal/keys/{revoked.pk}/")
    assert "Revoked" in _text(dead) and 'id="edit-key"' not in dead.content.decode()
    refused = portal_client.post(
        f"/portal/keys/{revoked.pk}/", {**_edit_form(revoked), "name": "back"}, follow=True
    )
    assert "This key no longer works" in _text(refused)
    revoked.refresh_from_db()
    assert revoked.name == "gone"


def test_expired_keys_and_used_up_budgets_are_flagged(portal_client: Client, user: Any) -> None:
    expired, _ = key_create(user=user, name="expired")
    APIKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    spent, _ = key_create(user=user, name="spent", monthly_credit_budget=10)
    _spend(spent, 10, "r1")
    page = portal_client.get("/portal/keys/").content.decode()
    expired_row = page[page.index(f'data-key-prefix="{expired.prefix}"') :]
    assert "Expired" in expired_row[: expired_row.index("</tr>")]
    spent_row = page[page.index(f'data-key-prefix="{spent.prefix}"') :]
    spent_row = spent_row[: spent_row.index("</tr>")]
    assert "10 / 10" in spent_row and "budget used" in spent_row
    assert 'id="expiring-keys"' not in page  # expired is not "expiring"


def test_another_users_key_page_is_no_such_key(portal_client: Client, other_user: Any) -> None:
    theirs, _ = key_create(user=other_user, name="theirs")
    response = portal_client.get(f"/portal/keys/{theirs.pk}/", follow=True)
    assert "No such API key." in _text(response)
    assert "theirs" not in _text(response)
    portal_client.post(f"/portal/keys/{theirs.pk}/", {**_edit_form(theirs), "name": "mine"})
    theirs.refresh_from_db()
    assert theirs.name == "theirs"


def test_usage_shows_each_keys_month_against_its_budget(portal_client: Client, user: Any) -> None:
    from metering.services import flush_usage, record_usage, usage_rollup

    key, _ = key_create(user=user, name="worker", monthly_credit_budget=40)
    _spend(key, 15, "r1")
    record_usage(
        request_id="r1",
        user_id=user.pk,
        api_key_id=key.pk,
        endpoint="/api/v1/generate",
        method="POST",
        status=200,
        credits_spent=15,
        response_time_ms=10.0,
    )
    flush_usage()
    usage_rollup(days=[timezone.localdate()])

    page = portal_client.get("/portal/usage/").content.decode()
    table = page[page.index('id="usage-by-key"') :]
    assert "15 / 40" in table[: table.index("</table>")]
    one_key = portal_client.get(f"/portal/usage/?key={key.pk}").content.decode()
    card = one_key[one_key.index('id="key-month"') :]
    assert "15 / 40" in card[: card.index("</section>")]
