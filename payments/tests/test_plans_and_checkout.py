"""Plans follow the subscriptions dj-stripe mirrors from (the fake) Stripe; checkout and portal."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.test import Client

from accounts.models import Tier
from apikeys.models import APIKey
from apikeys.services import key_create
from devpeers.stripe_api import StripePeer
from payments.models import EventState, StripeWebhookEvent
from payments.tests import factories as f


def _subscription_event(client: Client, stripe_api: StripePeer, kind: str, sub: dict) -> None:
    stripe_api.put(sub)  # what dj-stripe's re-fetch will find
    assert f.post_webhook(client, f.event(kind, sub)).status_code == 200
    call_command("run_grants", "--once")


def test_plans_are_public_and_come_from_the_catalogue(client: Client, db: Any):
    response = client.get("/api/v1/billing/plans")

    assert response.status_code == 200
    plans = {plan["name"]: plan for plan in response.json()["plans"]}
    assert plans["historian"]["monthly_credits"] == 200 and plans["historian"]["hd_access"]
    assert plans["explorer"]["price_cents"] == 499 and not plans["explorer"]["hd_access"]
    assert plans["api_pro"]["api_key_tier"] == "pro"
    assert plans["free"]["purchasable"] is False
    packs = {pack["name"]: pack for pack in response.json()["packs"]}
    assert packs["100_credits"]["credits"] == 100 and packs["100_credits"]["purchasable"]


def test_subscription_moves_plan_hd_access_and_key_tier(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer
):
    key, _ = key_create(user=user, name="ci")
    assert key.tier == Tier.FREE and not user.has_hd_access

    sub = f.subscription(customer_id, "api_pro")
    _subscription_event(client, stripe_api, "customer.subscription.created", sub)

    user.refresh_from_db()
    assert user.plan == "api_pro" and user.tier == Tier.PRO and user.has_hd_access
    assert APIKey.objects.get(pk=key.pk).tier == Tier.PRO
    assert StripeWebhookEvent.objects.get().state == EventState.PROCESSED
    # dj-stripe re-fetched the subscription from the Stripe API (here: the loopback server).
    assert stripe_api.calls("GET", f"/v1/subscriptions/{sub['id']}")

    # Downgrade to Explorer: no HD, keys back to free.
    changed = f.subscription(customer_id, "explorer", sub_id=sub["id"])
    _subscription_event(client, stripe_api, "customer.subscription.updated", changed)
    user.refresh_from_db()
    assert user.plan == "explorer" and not user.has_hd_access
    assert APIKey.objects.get(pk=key.pk).tier == Tier.FREE


def test_cancellation_takes_effect_at_period_end(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer
):
    sub = f.subscription(customer_id, "historian")
    _subscription_event(client, stripe_api, "customer.subscription.created", sub)

    # Cancelled in the portal: Stripe keeps it active until the period ends.
    ending = {**sub, "cancel_at_period_end": True}
    _subscription_event(client, stripe_api, "customer.subscription.updated", ending)
    user.refresh_from_db()
    assert user.plan == "historian" and user.has_hd_access

    ended = {**sub, "status": "canceled", "cancel_at_period_end": True}
    _subscription_event(client, stripe_api, "customer.subscription.deleted", ended)
    user.refresh_from_db()
    assert user.plan == "free" and not user.has_hd_access


def test_stripe_api_outage_never_loses_the_event(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer
):
    sub = f.subscription(customer_id, "historian")
    stripe_api.put(sub)
    stripe_api.down = True
    assert f.post_webhook(client, f.event("customer.subscription.created", sub)).status_code == 200

    call_command("run_grants", "--once")
    event = StripeWebhookEvent.objects.get()
    assert event.state == EventState.RECEIVED and event.attempts == 1 and event.last_error
    user.refresh_from_db()
    assert user.plan == "free"

    stripe_api.down = False
    call_command("run_grants", "--once")
    event.refresh_from_db()
    assert event.state == EventState.PROCESSED
    user.refresh_from_db()
    assert user.plan == "historian"


def test_checkout_for_a_pack(client: Client, user: Any, auth_headers: dict, stripe_api: StripePeer):
    response = client.post(
        "/api/v1/billing/checkout",
        {"package": "100_credits"},
        content_type="application/json",
        **auth_headers,
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["checkout_url"].startswith("https://checkout.stripe.com/")
    assert body["session_id"].startswith("cs_")
    (sent,) = stripe_api.calls("POST", "/v1/checkout/sessions")
    assert sent["mode"] == "payment"
    assert sent["line_items"]["0"]["price"] == f.PRICE_IDS["100_credits"]
    assert sent["metadata"] == {
        "user_id": str(user.pk),
        "package": "100_credits",
        "price": f.PRICE_IDS["100_credits"],  # what is granted is what was sold
    }
    assert sent["success_url"].startswith("https://app.timepointai.com/")


def test_checkout_creates_the_customer_once(
    client: Client, user: Any, auth_headers: dict, stripe_api: StripePeer
):
    for plan in ("historian", "historian"):
        response = client.post(
            "/api/v1/billing/checkout",
            {"plan": plan},
            content_type="application/json",
            **auth_headers,
        )
        assert response.status_code == 200
    assert len(stripe_api.calls("POST", "/v1/customers")) == 1
    sessions = stripe_api.calls("POST", "/v1/checkout/sessions")
    assert [s["mode"] for s in sessions] == ["subscription", "subscription"]
    assert sessions[0]["subscription_data"]["metadata"]["plan"] == "historian"


def test_checkout_rejects_unknown_items_and_client_amounts(
    client: Client, user: Any, auth_headers: dict, stripe_api: StripePeer
):
    for payload in ({"package": "1_000_000_credits"}, {"plan": "emperor"}, {"plan": "free"}, {}):
        response = client.post(
            "/api/v1/billing/checkout", payload, content_type="application/json", **auth_headers
        )
        assert response.status_code == 400, payload
        assert set(response.json()) >= {"detail", "code"}
    assert stripe_api.calls("POST", "/v1/checkout/sessions") == []


def test_checkout_needs_authentication(client: Client, db: Any):
    response = client.post(
        "/api/v1/billing/checkout", {"package": "100_credits"}, content_type="application/json"
    )
    assert response.status_code == 401


def test_billing_portal_link(
    client: Client, user: Any, auth_headers: dict, customer_id: str, stripe_api: StripePeer
):
    response = client.post("/api/v1/billing/portal", **auth_headers)

    assert response.status_code == 200
    assert response.json()["portal_url"].startswith("https://billing.stripe.com/")
    assert stripe_api.calls("POST", "/v1/billing_portal/sessions")[0]["customer"] == customer_id


def test_history_lists_payments_subscriptions_and_grants(
    client: Client, user: Any, auth_headers: dict, customer_id: str, stripe_api: StripePeer
):
    f.post_webhook(
        client, f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    )
    sub = f.subscription(customer_id, "historian")
    _subscription_event(client, stripe_api, "customer.subscription.created", sub)

    body = client.get("/api/v1/billing/history", **auth_headers).json()

    assert [p["status"] for p in body["payments"]] == ["paid"]
    assert body["grants"][0]["state"] == "sent" and body["grants"][0]["amount"] == 100
    assert body["subscriptions"][0]["plan"] == "historian"
    assert body["subscriptions"][0]["status"] == "active"


def test_deleting_the_account_cancels_the_subscription_and_exports_billing(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer, auth_headers: dict
):
    sub = f.subscription(customer_id, "historian")
    _subscription_event(client, stripe_api, "customer.subscription.created", sub)
    user.refresh_from_db()
    assert user.plan == "historian"

    export = client.get("/api/v1/users/me/export", **auth_headers)
    assert export.status_code == 200
    assert {"payments", "credit_grants"} <= set(export.json())

    assert client.delete("/api/v1/auth/me", **auth_headers).status_code == 204
    assert stripe_api.cancelled == [sub["id"]]
    user.refresh_from_db()
    assert user.plan == "free" and user.deleted_at is not None


def test_account_is_not_deleted_while_stripe_cannot_cancel_the_subscription(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer, auth_headers: dict
):
    sub = f.subscription(customer_id, "historian")
    _subscription_event(client, stripe_api, "customer.subscription.created", sub)

    stripe_api.down = True
    response = client.delete("/api/v1/auth/me", **auth_headers)
    assert response.status_code == 502
    assert response.json()["code"] == "stripe_error"
    user.refresh_from_db()
    assert user.deleted_at is None and user.plan == "historian"
