"""Pricing as data (issue 21), against the Stripe-compatible server: the catalogue follows Stripe's
prices and their metadata, a plan added in Stripe is sold end to end, upgrades grant the prorated
difference once (webhooks duplicated and late), downgrades wait for the period's end, and
subscribers keep what they bought. Like every payments test, each runs with events in the
current API shape and in the 2024 one."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from devpeers.stripe_api import StripeError, StripePeer
from payments.models import (
    CatalogueItem,
    CreditGrant,
    Payment,
    PlanChange,
    PlanChangeState,
    PlanSubscription,
    StripeWebhookEvent,
)
from payments.tests import factories as f

PLANS = "/api/v1/billing/plans"
CHANGE = "/api/v1/billing/subscription/change"


def _deliver(client: Client, stripe: StripePeer, events: list[dict[str, Any]]) -> None:
    """Stripe's deliveries of these events to the gateway's webhook, in this order."""
    for event in events:
        assert f.post_webhook(client, stripe.event_body(event)).status_code == 200, event["type"]


def _sent_since(client: Client, stripe: StripePeer, since: int) -> int:
    """Deliver every event since index `since`, run the worker; the next index."""
    _deliver(client, stripe, stripe.events_of(since=since))
    call_command("run_grants", "--once")
    return len(stripe.events)


def _post(client: Client, path: str, headers: dict[str, Any], **body: Any) -> Any:
    return client.post(path, body, content_type="application/json", **headers)


def _subscribe(
    client: Client, headers: dict[str, Any], stripe: StripePeer, plan: str
) -> dict[str, Any]:
    """Checkout through the gateway, paid on Stripe's page; every event delivered and worked."""
    checkout = _post(client, "/api/v1/billing/checkout", headers, plan=plan)
    assert checkout.status_code == 200, checkout.content
    since = len(stripe.events)
    session = stripe.checkout_complete(checkout.json()["session_id"])
    _sent_since(client, stripe, since)
    return stripe.objects[session["subscription"]]


def _credits(flash_peer: Any, user: Any) -> list[int]:
    """The credits granted into the user's Flash ledger, oldest first (signup's 50 not listed)."""
    return [row["amount"] for row in flash_peer.ledger_for(user.flash_user_id) if row["amount"] > 0]


def _plans(client: Client) -> dict[str, dict[str, Any]]:
    return {plan["name"]: plan for plan in client.get(PLANS).json()["plans"]}


def _period_end(subscription: dict[str, Any]) -> int:
    return int(subscription["items"]["data"][0]["current_period_end"])


@pytest.fixture
def headers(auth_headers: dict[str, Any]) -> dict[str, Any]:
    return auth_headers


@pytest.fixture
def start(stripe_api: StripePeer) -> int:
    """Stripe's clock, frozen now (it moves only when the test says)."""
    moment = int(time.time())
    stripe_api.clock_set(moment)
    return moment


# --- The catalogue follows Stripe


def test_a_price_metadata_change_reaches_the_catalogue_and_the_portal_without_a_restart(
    client: Client, user: Any, stripe_api: StripePeer
):
    portal_client = Client()
    portal_client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert _plans(client)["explorer"]["monthly_credits"] == 50
    since = len(stripe_api.events)

    # A billing person edits the price in the Dashboard: Explorer now gives 100 credits.
    stripe_api.api("POST", "/v1/prices/price_plan_explorer", metadata={"tp_monthly_credits": "100"})
    _sent_since(client, stripe_api, since)

    assert _plans(client)["explorer"]["monthly_credits"] == 100
    page = portal_client.get("/portal/billing/").content.decode()
    assert "100 credits a month" in page and "50 credits a month" not in page


def test_a_price_with_broken_metadata_is_refused_and_shown_to_staff(
    client: Client, user: Any, stripe_api: StripePeer, headers: dict[str, Any], admin_client: Client
):
    since = len(stripe_api.events)
    stripe_api.api(
        "POST", "/v1/prices/price_plan_historian", metadata={"tp_monthly_credits": "lots"}
    )
    stripe_api.api("POST", "/v1/products/prod_api_pro", metadata={"tp_key_tier": "platinum"})
    _sent_since(client, stripe_api, since)

    plans = _plans(client)
    assert "historian" not in plans and "api_pro" not in plans and "explorer" in plans
    refused = _post(client, "/api/v1/billing/checkout", headers, plan="historian")
    assert refused.status_code == 400 and refused.json()["code"] == "unknown_plan"

    listing = admin_client.get("/admin/payments/catalogueitem/?metadata=refused")
    text = listing.content.decode()
    assert listing.status_code == 200
    assert "price_plan_historian" in text and "tp_monthly_credits must be a whole number" in text
    assert "price_plan_api_pro" in text and "tp_key_tier must be one of free, pro" in text
    assert "price_plan_explorer" not in text
    dashboard = admin_client.get("/admin/dashboard/").content.decode()
    assert "price_plan_historian" in dashboard

    # Fixed in Stripe: on sale again.
    since = len(stripe_api.events)
    stripe_api.api(
        "POST", "/v1/prices/price_plan_historian", metadata={"tp_monthly_credits": "200"}
    )
    _sent_since(client, stripe_api, since)
    assert _plans(client)["historian"]["monthly_credits"] == 200


def test_catalogue_sync_reads_stripe_and_lists_refused_prices(
    client: Client, stripe_api: StripePeer, db: Any
):
    # Made in Stripe while the gateway heard nothing (webhooks lost): the command catches up.
    product = stripe_api.api("POST", "/v1/products", name="Odd", metadata={"tp_pack": "odd"})
    stripe_api.api("POST", "/v1/prices", product=product["id"], unit_amount="100", currency="usd")
    out, err = _command("catalogue_sync")
    assert "pack odd" not in out and "refused" in err and "tp_credits is missing" in err
    assert "6 valid prices, 1 refused." in out
    with pytest.raises(Exception, match="1 price"):
        _command("catalogue_sync", "--strict")


def _command(*args: str) -> tuple[str, str]:
    from io import StringIO

    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- A plan added in Stripe, bought end to end


def test_a_plan_created_in_stripe_is_bought_end_to_end(
    client: Client, user: Any, headers: dict[str, Any], stripe_api: StripePeer, flash_peer: Any
):
    since = len(stripe_api.events)
    product = stripe_api.api(
        "POST",
        "/v1/products",
        name="Creator",
        metadata={"tp_plan": "creator", "tp_hd_access": "true", "tp_order": "25"},
    )
    stripe_api.api(
        "POST",
        "/v1/prices",
        product=product["id"],
        unit_amount="1999",
        currency="usd",
        recurring={"interval": "month"},
        metadata={"tp_monthly_credits": "300"},
    )
    _sent_since(client, stripe_api, since)
    creator = _plans(client)["creator"]
    assert creator["monthly_credits"] == 300 and creator["price_cents"] == 1999
    assert creator["hd_access"] and creator["purchasable"]
    names = [plan["name"] for plan in client.get(PLANS).json()["plans"]]
    assert names == ["free", "explorer", "historian", "creator", "api_pro"]  # tp_order

    _subscribe(client, headers, stripe_api, "creator")

    user.refresh_from_db()
    assert user.plan == "creator" and user.has_hd_access and user.plan_key_tier == "free"
    assert _credits(flash_peer, user) == [300]
    mine = client.get("/api/v1/billing/subscription", **headers).json()
    assert mine["plan"] == "creator" and mine["monthly_credits"] == 300
    assert mine["grandfathered"] is False and mine["scheduled_change"] is None
    assert client.get("/api/v1/auth/me", **headers).json()["plan"] == "creator"


def test_an_invoice_for_a_price_the_catalogue_has_not_heard_of_is_granted_after_a_sync(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer, flash_peer: Any
):
    """A subscription made outside the gateway to a price whose `price.created` has not
    arrived: the webhook is accepted, and the worker records it once it has synced."""
    product = stripe_api.api("POST", "/v1/products", name="Team", metadata={"tp_plan": "team"})
    price = stripe_api.api(
        "POST",
        "/v1/prices",
        product=product["id"],
        unit_amount="9999",
        currency="usd",
        recurring={"interval": "month"},
        metadata={"tp_monthly_credits": "2500", "tp_key_tier": "pro"},
    )
    session = stripe_api.api(
        "POST",
        "/v1/checkout/sessions",
        mode="subscription",
        customer=customer_id,
        line_items={"0": {"price": price["id"], "quantity": "1"}},
        metadata={"user_id": str(user.pk)},
    )
    since = len(stripe_api.events)
    stripe_api.checkout_complete(session["id"])
    _deliver(client, stripe_api, stripe_api.events_of(since=since))  # no product/price events
    paid = StripeWebhookEvent.objects.get(type="invoice.paid")
    assert paid.recorded is False and CreditGrant.objects.count() == 0

    call_command("run_grants", "--once")
    call_command("run_grants", "--once")  # the grant goes out

    paid.refresh_from_db()
    assert paid.recorded and paid.state == "processed"
    assert _credits(flash_peer, user) == [2500]
    user.refresh_from_db()
    assert user.plan == "team" and user.plan_key_tier == "pro"


# --- Plan changes


def test_an_upgrade_mid_period_grants_the_prorated_difference_once(
    client: Client,
    user: Any,
    headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    start: int,
):
    subscription = _subscribe(client, headers, stripe_api, "explorer")
    end = _period_end(subscription)
    stripe_api.advance(to=start + (end - start) // 2)  # half the period left

    since = len(stripe_api.events)
    changed = _post(client, CHANGE, headers, plan="historian")

    assert changed.status_code == 200, changed.content
    body = changed.json()
    assert body["plan"] == "historian" and body["monthly_credits"] == 200
    assert body["hd_access"] is True and body["scheduled_change"] is None
    user.refresh_from_db()
    assert user.plan == "historian" and user.has_hd_access  # at once
    events = stripe_api.events_of(since=since)
    upgrade_paid = next(e for e in events if e["type"] == "invoice.paid")
    assert upgrade_paid["data"]["object"]["billing_reason"] == "subscription_update"

    # Late: the subscription's update first, then the next period's renewal, then the upgrade's
    # invoice, twice, and once more after the worker has run.
    _deliver(client, stripe_api, [e for e in events if e["type"] != "invoice.paid"])
    call_command("run_grants", "--once")
    since = len(stripe_api.events)
    stripe_api.advance(to=end)
    _sent_since(client, stripe_api, since)
    _deliver(client, stripe_api, [upgrade_paid, upgrade_paid])
    call_command("run_grants", "--once")
    _deliver(client, stripe_api, [upgrade_paid])
    call_command("run_grants", "--once")

    # (200 - 50) credits for half a month: Stripe billed 750 of 1499 cents → 75 credits.
    grant = CreditGrant.objects.get(key=f"stripe:{upgrade_paid['data']['object']['id']}")
    assert grant.amount == 75 and grant.state == "sent"
    assert _credits(flash_peer, user) == [50, 200, 75]
    assert flash_peer.user_balance(user.flash_user_id) == 375
    assert Payment.objects.get(reference=grant.key).amount_cents == 750 - 250
    change = PlanChange.objects.get()
    assert (change.kind, change.state) == ("upgrade", "applied")
    assert (change.from_monthly_credits, change.to_monthly_credits) == (50, 200)


def test_a_declined_upgrade_changes_nothing(
    client: Client, user: Any, headers: dict[str, Any], stripe_api: StripePeer, start: int
):
    subscription = _subscribe(client, headers, stripe_api, "explorer")
    stripe_api.advance(seconds=86400)
    stripe_api.decline = "card_declined"

    refused = _post(client, CHANGE, headers, plan="api_pro")

    assert refused.status_code == 402 and refused.json()["code"] == "payment_declined"
    user.refresh_from_db()
    assert user.plan == "explorer" and PlanChange.objects.count() == 0
    item = stripe_api.objects[subscription["id"]]["items"]["data"][0]
    assert item["price"]["id"] == "price_plan_explorer"


def test_a_downgrade_waits_for_the_end_of_the_period(
    client: Client,
    user: Any,
    headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    start: int,
    make_key: Any,
):
    key, _ = make_key(user)
    subscription = _subscribe(client, headers, stripe_api, "api_pro")
    end = _period_end(subscription)
    key.refresh_from_db()
    assert key.tier == "pro"
    stripe_api.advance(seconds=3 * 86400)

    since = len(stripe_api.events)
    changed = _post(client, CHANGE, headers, plan="explorer")

    assert changed.status_code == 200, changed.content
    body = changed.json()
    assert body["plan"] == "api_pro" and body["scheduled_change"]["plan"] == "explorer"
    assert body["scheduled_change"]["effective_at"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end))
    )
    _sent_since(client, stripe_api, since)  # Stripe bills Explorer from the next period
    user.refresh_from_db()
    key.refresh_from_db()
    assert user.plan == "api_pro" and user.has_hd_access and key.tier == "pro"
    assert not [e for e in stripe_api.events_of(since=since) if e["type"] == "invoice.paid"]

    since = len(stripe_api.events)
    stripe_api.advance(to=end)  # the renewal, at the new price
    _sent_since(client, stripe_api, since)

    user.refresh_from_db()
    key.refresh_from_db()
    assert user.plan == "explorer" and not user.has_hd_access and key.tier == "free"
    assert _credits(flash_peer, user) == [1000, 50]
    assert PlanChange.objects.get().state == PlanChangeState.APPLIED


def test_asking_for_the_current_plan_keeps_it_and_a_late_downgrade_applies_on_its_own(
    client: Client, user: Any, headers: dict[str, Any], stripe_api: StripePeer, start: int
):
    subscription = _subscribe(client, headers, stripe_api, "historian")
    assert _post(client, CHANGE, headers, plan="explorer").status_code == 200
    kept = _post(client, CHANGE, headers, plan="historian")
    assert kept.status_code == 200 and kept.json()["scheduled_change"] is None
    item = stripe_api.objects[subscription["id"]]["items"]["data"][0]
    assert item["price"]["id"] == "price_plan_historian"  # Stripe bills Historian again
    again = _post(client, CHANGE, headers, plan="historian")
    assert again.status_code == 409 and again.json()["code"] == "already_on_plan"

    # Downgraded again (a request of its own for Stripe, not a replay of the first one); the
    # renewal's events never come: at the period's end the worker moves the plan on its own.
    assert _post(client, CHANGE, headers, plan="explorer").status_code == 200
    item = stripe_api.objects[subscription["id"]]["items"]["data"][0]
    assert item["price"]["id"] == "price_plan_explorer"
    PlanChange.objects.filter(state=PlanChangeState.SCHEDULED).update(
        effective_at=timezone.now() - timedelta(seconds=1)
    )
    call_command("run_grants", "--once")
    user.refresh_from_db()
    assert user.plan == "explorer" and not user.has_hd_access


def test_cancel_at_period_end_and_resume(
    client: Client, user: Any, headers: dict[str, Any], stripe_api: StripePeer, start: int
):
    subscription = _subscribe(client, headers, stripe_api, "historian")
    cancel, resume = "/api/v1/billing/subscription/cancel", "/api/v1/billing/subscription/resume"

    ending = _post(client, cancel, headers)
    assert ending.status_code == 200 and ending.json()["cancel_at_period_end"] is True
    assert stripe_api.objects[subscription["id"]]["cancel_at_period_end"] is True
    assert _post(client, cancel, headers).json()["code"] == "already_cancelled"
    changing = _post(client, CHANGE, headers, plan="api_pro")
    assert changing.status_code == 409 and changing.json()["code"] == "subscription_ending"

    resumed = _post(client, resume, headers)
    assert resumed.status_code == 200 and resumed.json()["cancel_at_period_end"] is False
    assert stripe_api.objects[subscription["id"]]["cancel_at_period_end"] is False

    assert _post(client, cancel, headers).status_code == 200
    since = len(stripe_api.events)
    stripe_api.advance(to=_period_end(subscription))
    _sent_since(client, stripe_api, since)
    user.refresh_from_db()
    assert user.plan == "free" and not user.has_hd_access
    gone = client.get("/api/v1/billing/subscription", **headers)
    assert gone.status_code == 404 and gone.json()["code"] == "no_subscription"
    assert _post(client, resume, headers).json()["code"] == "no_subscription"


def test_changing_plan_needs_a_subscription_and_a_plan_on_sale(
    client: Client, user: Any, headers: dict[str, Any], stripe_api: StripePeer
):
    missing = _post(client, CHANGE, headers, plan="historian")
    assert missing.status_code == 409 and missing.json()["code"] == "no_subscription"
    for body in ({"plan": "emperor"}, {"plan": ""}, {}):
        refused = client.post(CHANGE, body, content_type="application/json", **headers)
        assert refused.status_code == 400 and set(refused.json()) >= {"detail", "code"}
    assert (
        client.post(CHANGE, {"plan": "historian"}, content_type="application/json").status_code
        == 401
    )


# --- Subscribers keep what they bought


def test_a_grandfathered_subscriber_keeps_their_price_and_credits_after_a_price_change(
    client: Client,
    user: Any,
    other_user: Any,
    headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    start: int,
    admin_client: Client,
):
    subscription = _subscribe(client, headers, stripe_api, "explorer")

    # The new price list: Explorer $7.99 for 100 credits; the old price archived, and even its
    # metadata edited afterwards.
    since = len(stripe_api.events)
    stripe_api.api(
        "POST",
        "/v1/prices",
        product="prod_explorer",
        unit_amount="799",
        currency="usd",
        recurring={"interval": "month"},
        metadata={"tp_monthly_credits": "100"},
    )
    stripe_api.api("POST", "/v1/prices/price_plan_explorer", active="false")
    stripe_api.api("POST", "/v1/prices/price_plan_explorer", metadata={"tp_monthly_credits": "80"})
    _sent_since(client, stripe_api, since)
    explorer = _plans(client)["explorer"]
    assert (explorer["price_cents"], explorer["monthly_credits"]) == (799, 100)

    since = len(stripe_api.events)
    stripe_api.advance(to=_period_end(subscription))  # renewed at the price they bought
    _sent_since(client, stripe_api, since)

    assert _credits(flash_peer, user) == [50, 50]
    mine = client.get("/api/v1/billing/subscription", **headers).json()
    assert (mine["price_cents"], mine["monthly_credits"], mine["grandfathered"]) == (499, 50, True)
    page = admin_client.get("/admin/payments/plansubscription/").content.decode()
    assert subscription["id"] in page and "price_plan_explorer" in page
    assert PlanSubscription.objects.get().stripe_price_id == "price_plan_explorer"

    # A new subscriber gets today's terms.
    from accounts.services import session_create

    other_user.flash_user_id = flash_peer.add_user(other_user.username, email=other_user.email)
    other_user.save()
    _, token = session_create(user=other_user)
    newcomer: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    _subscribe(client, newcomer, stripe_api, "explorer")
    theirs = client.get("/api/v1/billing/subscription", **newcomer).json()
    assert (theirs["price_cents"], theirs["monthly_credits"]) == (799, 100)
    assert theirs["grandfathered"] is False
    assert _credits(flash_peer, other_user)[-1] == 100


def test_the_catalogue_knows_every_price_it_was_given(db: Any, stripe_api: StripePeer):
    """Packs and plans of the memo, on sale, ordered as their metadata says."""
    on_sale = [(i.kind, i.key, i.credits) for i in CatalogueItem.objects.all() if i.on_sale]
    assert on_sale == [
        ("pack", "100_credits", 100),
        ("pack", "500_credits", 500),
        ("pack", "1000_credits", 1000),
        ("plan", "explorer", 50),
        ("plan", "historian", 200),
        ("plan", "api_pro", 1000),
    ]
    assert json.loads(json.dumps([i.problems for i in CatalogueItem.objects.all()])) == [[]] * 6
    with pytest.raises(StripeError):
        stripe_api.api("POST", "/v1/prices/price_plan_explorer", unit_amount="1")


def test_a_change_right_after_paying_does_not_wait_for_the_mirror(
    client: Client, user: Any, headers: dict[str, Any], stripe_api: StripePeer, start: int
):
    """Only the paid invoice has arrived (the subscription's own events are late): the change
    asks Stripe for the subscription's item instead of waiting for dj-stripe's copy."""
    checkout = _post(client, "/api/v1/billing/checkout", headers, plan="explorer")
    since = len(stripe_api.events)
    stripe_api.checkout_complete(checkout.json()["session_id"])
    _deliver(client, stripe_api, stripe_api.events_of("invoice.paid", since=since))
    stripe_api.advance(seconds=86400)

    changed = _post(client, CHANGE, headers, plan="historian")

    assert changed.status_code == 200, changed.content
    assert changed.json()["plan"] == "historian"
    assert stripe_api.calls("GET", "/v1/subscriptions/")


def test_a_downgrade_before_the_period_is_known_asks_stripe_when_it_ends(
    client: Client, user: Any, headers: dict[str, Any], stripe_api: StripePeer, start: int
):
    """Only the Checkout session's completion has arrived: the downgrade is scheduled for the
    period's end as Stripe has it, never applied at once."""
    checkout = _post(client, "/api/v1/billing/checkout", headers, plan="historian")
    since = len(stripe_api.events)
    session = stripe_api.checkout_complete(checkout.json()["session_id"])
    _deliver(client, stripe_api, stripe_api.events_of("checkout.session.completed", since=since))
    assert PlanSubscription.objects.get().current_period_end is None

    changed = _post(client, CHANGE, headers, plan="explorer")

    assert changed.status_code == 200, changed.content
    end = _period_end(stripe_api.objects[session["subscription"]])
    effective = changed.json()["scheduled_change"]["effective_at"]
    assert effective.startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end)))
    user.refresh_from_db()
    assert user.plan == "historian"
