"""The portal as a person uses it: sign in, keys, usage, balance and history, checkout."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from apikeys.models import APIKey
from apikeys.services import key_create

KEY_PATTERN = re.compile(r'value="(tp_(?:live|test)_[0-9A-Za-z]+)"')


def _secret(response: Any) -> str:
    found = KEY_PATTERN.search(response.content.decode())
    assert found, "the new key is not on the page"
    return found.group(1)


# --- sign in


@pytest.mark.django_db
def test_pages_need_sign_in() -> None:
    response = Client().get("/portal/keys/")
    assert response.status_code == 302
    assert response["Location"] == "/portal/login/?next=/portal/keys/"


@pytest.mark.django_db
def test_login_page_without_auth0_says_how_to_configure(settings: Any) -> None:
    settings.OIDC_RP_CLIENT_ID = ""
    response = Client().get("/portal/login/")
    assert response.status_code == 200
    assert b"AUTH0_CLIENT_ID" in response.content


@pytest.mark.django_db
def test_oidc_sign_in_round_trip(oidc_provider: Any, flash_peer: Any) -> None:
    """Portal → /oidc/authenticate → the provider → /oidc/callback → the page asked for."""
    client = Client()
    page = client.get("/portal/login/?next=/portal/keys/")
    assert b"/oidc/authenticate/?next=/portal/keys/" in page.content

    start = client.get("/oidc/authenticate/", {"next": "/portal/keys/"})
    assert start.status_code == 302
    assert start["Location"].startswith(oidc_provider.url + "/authorize?")

    back = httpx.get(start["Location"], follow_redirects=False)
    assert back.status_code == 302
    callback = urlparse(back.headers["location"])
    assert callback.path == "/oidc/callback/"

    done = client.get(callback.path + "?" + callback.query)
    assert done.status_code == 302
    assert done["Location"] == "/portal/keys/"
    keys_page = client.get("/portal/keys/")
    assert keys_page.status_code == 200
    assert b"dev@example.com" in keys_page.content
    assert oidc_provider.token_requests == 1


# --- keys


@pytest.mark.django_db
def test_a_new_key_is_shown_once_and_authenticates(portal_client: Client, user: Any) -> None:
    created = portal_client.post(
        "/portal/keys/", {"name": "laptop", "mode": "live", "scopes": ["read", "generate"]}
    )
    assert created.status_code == 200
    assert created["Cache-Control"] == "no-store"
    raw = _secret(created)
    assert raw.startswith("tp_live_")
    assert b'data-copy="new-key"' in created.content  # the copy button

    listing = portal_client.get("/portal/keys/")
    assert raw.encode() not in listing.content
    key = APIKey.objects.get(user=user)
    assert key.prefix.encode() in listing.content

    # The key works on the API (an authenticated route its default `read` scope covers; the
    # relay's balance is covered in the browser test).
    answer = Client().get("/api/v1/usage", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert answer.status_code == 200


@pytest.mark.django_db
def test_roll_shows_the_replacement_and_revoke_stops_a_key(
    portal_client: Client, user: Any
) -> None:
    key, raw = key_create(user=user, name="server", mode="live")
    rolled = portal_client.post(f"/portal/keys/{key.pk}/roll/")
    assert rolled.status_code == 200
    new_raw = _secret(rolled)
    assert new_raw != raw
    key.refresh_from_db()
    assert key.replaced_by is not None and key.expires_at is not None  # grace period

    revoked = portal_client.post(f"/portal/keys/{key.replaced_by.pk}/revoke/", follow=True)
    assert b"revoked" in revoked.content
    assert APIKey.objects.get(pk=key.replaced_by.pk).revoked_at is not None
    assert Client().get("/api/v1/keys", HTTP_AUTHORIZATION=f"Bearer {new_raw}").status_code == 401


@pytest.mark.django_db
def test_another_users_key_cannot_be_touched(portal_client: Client, flash_peer: Any) -> None:
    from accounts.models import User

    other = User.objects.create_user(username="other", auth0_sub="auth0|other")
    key, _ = key_create(user=other, name="theirs", mode="live")
    response = portal_client.post(f"/portal/keys/{key.pk}/revoke/", follow=True)
    assert b"No such API key" in response.content
    key.refresh_from_db()
    assert key.revoked_at is None


@pytest.mark.django_db
def test_forms_are_csrf_protected(user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user, backend="accounts.oidc.Auth0OIDCBackend")
    assert client.post("/portal/keys/", {"name": "x", "mode": "live"}).status_code == 403
    assert not APIKey.objects.exists()


# --- usage


@pytest.mark.django_db
def test_usage_page_charts_calls_per_day_and_per_key(portal_client: Client, user: Any) -> None:
    from metering.services import flush_usage, record_usage, usage_rollup

    key, _ = key_create(user=user, name="laptop", mode="live")
    for index, status in enumerate((200, 200, 502)):
        record_usage(
            request_id=f"portal-usage-{index}",
            user_id=user.pk,
            api_key_id=key.pk,
            endpoint="/api/v1/generate",
            method="POST",
            status=status,
            credits_spent=5 if status == 200 else 0,
            response_time_ms=12.0,
        )
    flush_usage()
    today = timezone.localdate()
    usage_rollup(days=[today])

    page = portal_client.get("/portal/usage/").content.decode()
    label = today.strftime("%b %-d")
    assert f"<title>{label}: 3 requests</title>" in page
    assert f"<title>{label}: 1 errors</title>" in page
    assert f"<title>{label}: 10 credits</title>" in page
    assert 'id="usage-by-key"' in page and "laptop" in page

    one_key = portal_client.get(f"/portal/usage/?key={key.pk}&days=7").content.decode()
    assert f"<title>{label}: 3 requests</title>" in one_key


# --- balance, history, checkout


@pytest.mark.django_db
def test_billing_shows_flash_balance_and_history(
    portal_client: Client, user: Any, flash_peer: Any, catalogue: Any
) -> None:
    from upstreams import flash

    flash.admin_grant(
        flash_user_id=user.flash_user_id,
        amount=100,
        transaction_type="stripe_purchase",
        description="100 credits",
    )
    page = portal_client.get("/portal/billing/").content.decode()
    assert '<div class="stat" id="balance">150</div>' in page
    assert "100 credits" in page and "+100" in page
    assert "<strong>500 credits</strong>" in page and "<strong>API Pro</strong>" in page


@pytest.mark.django_db
def test_billing_names_what_each_payment_bought(
    portal_client: Client, user: Any, flash_peer: Any, catalogue: Any
) -> None:
    from payments.models import Payment

    Payment.objects.create(
        provider="stripe", reference="in_1", user=user, product="api_pro", amount_cents=4900,
        currency="usd",
    )  # fmt: skip
    Payment.objects.create(
        provider="stripe", reference="cs_1", user=user, product="gone_pack", amount_cents=500,
        currency="usd",
    )  # fmt: skip
    page = portal_client.get("/portal/billing/").content.decode()
    payments = page.split("<h2>Payments</h2>", 1)[1]
    assert '<td data-label="Item">API Pro</td>' in payments
    # A key the catalogue never named reads as itself.
    assert '<td data-label="Item">gone_pack</td>' in payments


@pytest.mark.django_db
def test_billing_page_survives_flash_being_down(
    portal_client: Client, user: Any, settings: Any
) -> None:
    settings.FLASH_URL = "http://127.0.0.1:9"  # nothing listens there
    response = portal_client.get("/portal/billing/")
    assert response.status_code == 200
    assert b"not answering right now" in response.content


@pytest.mark.django_db
def test_buying_credits_redirects_to_stripe_checkout(portal_client: Client, catalogue: Any) -> None:
    response = portal_client.post("/portal/billing/checkout/", {"product": "pack:100_credits"})
    assert response.status_code == 303
    sessions = [o for o in catalogue.objects.values() if o.get("object") == "checkout.session"]
    assert len(sessions) == 1
    assert response["Location"] == sessions[0]["url"]


@pytest.mark.django_db
def test_an_unknown_product_is_refused_on_the_page(portal_client: Client, stripe_api: Any) -> None:
    response = portal_client.post(
        "/portal/billing/checkout/", {"product": "pack:free_money"}, follow=True
    )
    assert b"Unknown package" in response.content
