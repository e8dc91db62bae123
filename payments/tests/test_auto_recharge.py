"""Auto-recharge against the Stripe-compatible server, the Flash peer and a real SMTP server: the
card saved at a normal Checkout; a charged generation's balance check finding the balance below
the threshold (the low-balance watch's crossing) records one recharge; the off-session
PaymentIntent (idempotency key from the recharge); the credits granted once from
`payment_intent.succeeded` (duplicated, late, or beside Checkout's own grant); a decline or
authentication required turning it off with `credits.recharge_failed` and an email. Every test
runs with Stripe's events in both API shapes (`stripe_shape`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.test import Client

from accounts.tests.staff import staff_signed_in
from alerts.models import LowBalanceAlert, LowBalanceCrossing, WatchPurpose
from alerts.services import generation_charged
from devpeers.faultproxy import FaultProxy
from devpeers.smtp_sink import SmtpSink
from devpeers.stripe_api import StripePeer
from payments.models import (
    AutoRecharge,
    CreditGrant,
    GrantState,
    Payment,
    Recharge,
    RechargeState,
    StripeWebhookEvent,
)
from payments.tests import factories as f
from webhooks.models import EventType, WebhookEvent

PACK = "100_credits"  # the memo's pack: 100 credits for $4.99


def _deliver(client: Client, stripe_api: StripePeer, since: int) -> int:
    """Post every event Stripe made from index `since` to the gateway's webhook, signed, in the
    shape of the test's endpoint; returns the index to continue from."""
    events = stripe_api.events_of(since=since)
    for event in events:
        response = f.post_webhook(client, stripe_api.event_body(event))
        assert response.status_code == 200, response.content
    return since + len(events)


def _buy_pack_at_checkout(
    client: Client, auth_headers: dict[str, Any], stripe_api: StripePeer, card: str
) -> int:
    """The user buys a pack at Checkout with `card` (saved for later); the gateway hears every
    event. Returns the event index after them."""
    since = len(stripe_api.events)
    response = client.post(
        "/api/v1/billing/checkout",
        {"package": PACK},
        content_type="application/json",
        **auth_headers,
    )
    assert response.status_code == 200, response.content
    stripe_api.checkout_complete(response.json()["session_id"], card)
    since = _deliver(client, stripe_api, since)
    call_command("run_grants", "--once")
    return since


def _turn_on(client: Client, auth_headers: dict[str, Any], **rule: Any) -> Any:
    body = {"enabled": True, "threshold": 40, "pack": PACK, "daily_cap": 2, **rule}
    return client.put(
        "/api/v1/billing/auto-recharge", body, content_type="application/json", **auth_headers
    )


def _falls_to(flash_peer: Any, user: Any, balance: int) -> Recharge | None:
    """Generations take the user's Flash balance to `balance`; a charged one settles (its
    balance check is due) and the worker passes once: it reads Flash, and a fall below the
    threshold records the recharge it charges in the same pass. Returns the newest recharge."""
    flash_peer.set_balance(user.flash_user_id, balance)
    generation_charged(user_id=user.pk)
    call_command("run_grants", "--once")
    return Recharge.objects.filter(user=user).order_by("-id").first()


def _intents(stripe_api: StripePeer, recharge: Recharge) -> list[dict[str, Any]]:
    return [
        obj
        for obj in stripe_api.objects.values()
        if obj.get("object") == "payment_intent"
        and (obj.get("metadata") or {}).get("tp_recharge") == str(recharge.public_id)
    ]


@pytest.fixture
def card_saved(
    client: Client, user: Any, auth_headers: dict[str, Any], stripe_api: StripePeer
) -> int:
    """A pack bought at Checkout with a Visa card, which Stripe keeps for later payments."""
    return _buy_pack_at_checkout(client, auth_headers, stripe_api, "pm_card_visa")


def test_checkout_saves_the_card_and_its_pack_is_granted_once(
    client: Client, user: Any, stripe_api: StripePeer, flash_peer: Any, card_saved: int
) -> None:
    (session,) = stripe_api.calls("POST", "/v1/checkout/sessions")
    assert session["payment_intent_data"]["setup_future_usage"] == "off_session"
    customer = stripe_api.objects[session["customer"]]["id"]
    assert [m["card"]["last4"] for m in stripe_api.payment_methods_of(customer)] == ["4242"]
    # Checkout's payment intent also sent payment_intent.succeeded: one grant all the same.
    kinds = set(StripeWebhookEvent.objects.values_list("type", flat=True))
    assert {"checkout.session.completed", "payment_intent.succeeded"} <= kinds
    (grant,) = CreditGrant.objects.all()
    assert grant.amount == 100 and grant.state == GrantState.SENT
    assert flash_peer.user_balance(user.flash_user_id) == 150


def test_a_fall_below_the_threshold_buys_the_pack_once(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    card_saved: int,
) -> None:
    response = _turn_on(client, auth_headers)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["enabled"] and body["card"] == {"brand": "visa", "last4": "4242"}
    assert body["threshold"] == 40 and body["pack"] == PACK and body["turned_off"] is None

    watch = LowBalanceAlert.objects.get(user=user, purpose=WatchPurpose.RECHARGE)
    assert watch.threshold == 40 and watch.armed  # 150 credits: above it

    recharge = _falls_to(flash_peer, user, 35)

    assert recharge is not None and recharge.state == RechargeState.PAID
    (crossing,) = LowBalanceCrossing.objects.filter(purpose=WatchPurpose.RECHARGE)
    assert recharge.key == f"crossing:{crossing.pk}" and recharge.balance == 35
    assert recharge.amount_cents == 499 and recharge.credits == 100  # the catalogue's pack
    # Still below at the next check: the same fall, nothing more.
    assert _falls_to(flash_peer, user, 30) == recharge and Recharge.objects.count() == 1
    (intent,) = _intents(stripe_api, recharge)
    assert intent["status"] == "succeeded" and intent["amount"] == 499
    assert recharge.stripe_payment_intent == intent["id"]
    (sent,) = stripe_api.calls("POST", "/v1/payment_intents")
    assert sent["off_session"] == "true" and sent["confirm"] == "true"
    assert sent["payment_method"] == recharge.payment_method
    assert not CreditGrant.objects.filter(key=f"stripe:{intent['id']}").exists()  # not yet

    # The webhook brings the credits, once, however often it arrives.
    since = _deliver(client, stripe_api, card_saved)
    (succeeded,) = [
        e
        for e in stripe_api.events_of(since=card_saved)
        if e["type"] == ("payment_intent.succeeded")
    ]
    assert f.post_webhook(client, stripe_api.event_body(succeeded)).json()["duplicate"]
    resent = json.loads(stripe_api.event_body(succeeded))
    resent["id"] = f.new_id("evt")  # a second event about the same payment
    assert f.post_webhook(client, json.dumps(resent).encode()).status_code == 200
    call_command("run_grants", "--once")

    grant = CreditGrant.objects.get(key=f"stripe:{intent['id']}")
    assert grant.amount == 100 and grant.state == GrantState.SENT
    assert CreditGrant.objects.count() == 2  # the Checkout pack, and this one
    assert flash_peer.user_balance(user.flash_user_id) == 130  # 30 + 100
    # The grant's balance re-armed the watch: the next fall buys again.
    assert LowBalanceAlert.objects.get(user=user, purpose=WatchPurpose.RECHARGE).armed
    recharge.refresh_from_db()
    assert recharge.state == RechargeState.SUCCEEDED and recharge.grant == grant
    payment = Payment.objects.get(reference=grant.key)
    assert payment.product == PACK and payment.amount_cents == 499
    assert payment.stripe_payment_intent == intent["id"]
    assert (
        WebhookEvent.objects.filter(
            type=EventType.CREDITS_GRANTED, dedupe_key=f"credits.granted:{grant.key}"
        ).count()
        == 1
    )
    listed = client.get("/api/v1/billing/auto-recharge", **auth_headers).json()
    assert listed["recharges_last_24h"] == 1
    assert [(r["state"], r["credits"]) for r in listed["recent"]] == [("succeeded", 100)]
    assert _deliver(client, stripe_api, since) == since  # nothing else happened at Stripe
    # dj-stripe mirrored every event (the PaymentIntents, charges and saved cards included).
    assert set(StripeWebhookEvent.objects.values_list("state", flat=True)) == {"processed"}


def test_a_late_webhook_grants_when_it_comes(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    card_saved: int,
) -> None:
    assert _turn_on(client, auth_headers).status_code == 200
    recharge = _falls_to(flash_peer, user, 10)
    assert recharge is not None
    call_command("run_grants", "--once")  # passes go by without the webhook: nothing granted
    recharge.refresh_from_db()
    assert recharge.state == RechargeState.PAID
    assert CreditGrant.objects.count() == 1 and flash_peer.user_balance(user.flash_user_id) == 10
    # Another charged generation meanwhile: still the one recharge, its credits on their way.
    assert _falls_to(flash_peer, user, 5) == recharge

    _deliver(client, stripe_api, card_saved)
    call_command("run_grants", "--once")

    recharge.refresh_from_db()
    assert recharge.state == RechargeState.SUCCEEDED
    assert flash_peer.user_balance(user.flash_user_id) == 105


def test_a_lost_answer_is_asked_again_with_the_same_key_and_charged_once(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    card_saved: int,
    settings: Any,
) -> None:
    assert _turn_on(client, auth_headers).status_code == 200
    host, port = settings.STRIPE_API_BASE.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port)).start()
    try:
        settings.STRIPE_API_BASE = proxy.url
        # Stripe makes the payment; its answer never reaches the gateway.
        proxy.mode, proxy.arm_on = "drop_after_request", b"POST /v1/payment_intents"
        recharge = _falls_to(flash_peer, user, 10)
        assert recharge is not None
        assert recharge.state == RechargeState.RETRYING and recharge.attempts == 1
        assert len(_intents(stripe_api, recharge)) == 1  # charged, as far as Stripe knows

        proxy.mode, proxy.arm_on = "pass", None
        call_command("run_grants", "--once")
    finally:
        proxy.stop()

    recharge.refresh_from_db()
    assert recharge.state == RechargeState.PAID and recharge.attempts == 2
    (intent,) = _intents(stripe_api, recharge)  # the repeat was answered, not charged again
    assert recharge.stripe_payment_intent == intent["id"]
    assert stripe_api.idempotent_replays == [recharge.idempotency_key]
    first, again = stripe_api.calls("POST", "/v1/payment_intents")
    assert first == again  # the same parameters under the same key
    _deliver(client, stripe_api, card_saved)
    call_command("run_grants", "--once")
    assert flash_peer.user_balance(user.flash_user_id) == 110


def _turned_off_with(
    client: Client, auth_headers: dict[str, Any], recharge: Recharge, code: str, smtp: SmtpSink
) -> None:
    """The recharge failed with `code`: auto-recharge off (its balance no longer watched), one
    `credits.recharge_failed`, one email."""
    recharge.refresh_from_db()
    assert recharge.state == RechargeState.FAILED and recharge.failure_code == code
    rule = AutoRecharge.objects.get(user=recharge.user)
    assert not rule.enabled and rule.failure_code == code and rule.failed_at is not None
    assert not LowBalanceAlert.objects.filter(purpose=WatchPurpose.RECHARGE).exists()
    [message] = smtp.wait_for(1)
    assert message["To"] == "ada@example.com" and message["Message-ID"] == recharge.message_id
    assert message["Subject"] == f"TIMEPOINT auto-recharge is off: {recharge.failure_message}"
    body = message.get_content()
    assert "below your auto-recharge threshold of 40" in body and "100 credits" in body
    assert "http://127.0.0.1:8000/portal/billing/" in body
    (event,) = WebhookEvent.objects.filter(type=EventType.CREDITS_RECHARGE_FAILED)
    assert event.data["pack"] == PACK and event.data["code"] == code
    assert event.data["reason"] == recharge.failure_message
    body = client.get("/api/v1/billing/auto-recharge", **auth_headers).json()
    assert body["enabled"] is False and body["turned_off"]["code"] == code
    assert [(r["state"], r["failure_code"]) for r in body["recent"]] == [("failed", code)]
    portal = Client()
    portal.force_login(recharge.user, backend="django.contrib.auth.backends.ModelBackend")
    page = portal.get("/portal/keys/").content.decode()
    assert 'id="auto-recharge-off-banner"' in page and recharge.failure_message in page


def test_a_declined_card_turns_auto_recharge_off(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    card_saved: int,
    smtp: SmtpSink,
) -> None:
    assert _turn_on(client, auth_headers).status_code == 200
    # The customer changes their card in the billing portal to one that attaches, then declines.
    customer = str(user.djstripe_customers.get().id)
    new = stripe_api.api(
        "POST", "/v1/payment_methods/pm_card_chargeCustomerFail/attach", customer=customer
    )
    stripe_api.api(
        "POST", f"/v1/customers/{customer}", invoice_settings={"default_payment_method": new["id"]}
    )

    recharge = _falls_to(flash_peer, user, 5)

    assert recharge is not None
    _turned_off_with(client, auth_headers, recharge, "card_declined", smtp)
    assert recharge.payment_method == new["id"] and recharge.stripe_payment_intent
    # Stripe's payment_intent.payment_failed says it again: nothing more happens.
    _deliver(client, stripe_api, card_saved)
    call_command("run_grants", "--once")
    _turned_off_with(client, auth_headers, recharge, "card_declined", smtp)
    assert CreditGrant.objects.count() == 1
    assert flash_peer.user_balance(user.flash_user_id) == 5
    # Off: the next fall buys nothing.
    flash_peer.set_balance(user.flash_user_id, 100)
    assert _falls_to(flash_peer, user, 1) == recharge and Recharge.objects.count() == 1

    # Staff see it: support reads the failed recharge and the rule it turned off.
    support, _ = staff_signed_in("support")
    listed = support.get("/admin/payments/recharge/?state__exact=failed").content.decode()
    assert recharge.stripe_payment_intent in listed and "card_declined" in listed
    detail = support.get(f"/admin/payments/recharge/{recharge.pk}/change/").content.decode()
    assert "Your card was declined." in detail and recharge.payment_method in detail
    rules = support.get("/admin/payments/autorecharge/?failure_code=card_declined")
    assert rules.status_code == 200 and "visa ••0341" in rules.content.decode()


def test_authentication_required_turns_auto_recharge_off(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    smtp: SmtpSink,
) -> None:
    # 3D Secure on every payment: completed on Checkout's page, impossible off session.
    since = _buy_pack_at_checkout(
        client, auth_headers, stripe_api, "pm_card_authenticationRequired"
    )
    assert _turn_on(client, auth_headers).status_code == 200

    recharge = _falls_to(flash_peer, user, 5)

    assert recharge is not None
    _turned_off_with(client, auth_headers, recharge, "authentication_required", smtp)
    assert "confirm payments yourself" in smtp.messages[0].get_content()
    _deliver(client, stripe_api, since)
    call_command("run_grants", "--once")
    _turned_off_with(client, auth_headers, recharge, "authentication_required", smtp)
    assert flash_peer.user_balance(user.flash_user_id) == 5

    # Turned on again while below the threshold (the card fixed): the failure is cleared and,
    # the balance being below it, a pack is bought at once.
    body = _turn_on(client, auth_headers).json()
    assert body["enabled"] and body["turned_off"] is None
    again = Recharge.objects.exclude(pk=recharge.pk).get()
    assert again.state == RechargeState.PENDING and again.balance == 5


def test_a_payment_needing_action_reported_by_webhook_fails_the_recharge(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    card_saved: int,
    smtp: SmtpSink,
) -> None:
    """The worker's answer was lost and Stripe says the payment needs the customer."""
    assert _turn_on(client, auth_headers).status_code == 200
    stripe_api.down = True  # the worker gets no answer: the recharge waits for a retry
    recharge = _falls_to(flash_peer, user, 5)
    assert recharge is not None and recharge.state == RechargeState.RETRYING
    intent = {
        "id": f.new_id("pi"),
        "object": "payment_intent",
        "status": "requires_action",
        "amount": 499,
        "currency": "usd",
        "metadata": {"tp_recharge": str(recharge.public_id)},
        "last_payment_error": None,
        "livemode": False,
    }
    assert (
        f.post_webhook(client, f.event("payment_intent.requires_action", intent)).status_code == 200
    )
    call_command("run_grants", "--once")

    _turned_off_with(client, auth_headers, recharge, "authentication_required", smtp)


def test_the_daily_cap_skips_further_recharges(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
    card_saved: int,
) -> None:
    assert _turn_on(client, auth_headers, daily_cap=1).status_code == 200
    first = _falls_to(flash_peer, user, 5)
    assert first is not None and first.state == RechargeState.PAID
    _deliver(client, stripe_api, card_saved)
    call_command("run_grants", "--once")  # 105 credits: above the threshold again

    second = _falls_to(flash_peer, user, 20)

    assert second is not None and second != first
    assert second.state == RechargeState.SKIPPED and second.failure_code == "daily_cap_reached"
    assert len(stripe_api.calls("POST", "/v1/payment_intents")) == 1
    assert AutoRecharge.objects.get(user=user).enabled  # a skip is not a failure
    body = client.get("/api/v1/billing/auto-recharge", **auth_headers).json()
    assert [r["state"] for r in body["recent"]] == ["skipped", "succeeded"]
    assert body["recharges_last_24h"] == 1


def test_the_rule_is_validated_and_needs_a_saved_card(
    client: Client, user: Any, auth_headers: dict[str, Any], stripe_api: StripePeer
) -> None:
    refused: list[tuple[dict[str, Any], str]] = [
        ({"pack": "no_such_pack"}, "unknown_package"),
        ({"threshold": 0}, "invalid_request"),
        ({"daily_cap": 11}, "invalid_request"),
        ({"amount_cents": 1}, "invalid_request"),  # never an amount from the client
    ]
    for body, code in refused:
        response = _turn_on(client, auth_headers, **body)
        assert response.status_code == 400, (body, response.content)
        assert response.json()["code"] == code, response.json()
    response = _turn_on(client, auth_headers)
    assert response.status_code == 409 and response.json()["code"] == "no_saved_card"
    assert not AutoRecharge.objects.exists()
    # Off needs no card: the rule is kept for later.
    off = _turn_on(client, auth_headers, enabled=False)
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert client.get("/api/v1/billing/auto-recharge").status_code == 401


def test_the_portal_form_sets_the_rule_and_lists_recharges(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    stripe_api: StripePeer,
    flash_peer: Any,
) -> None:
    portal = Client()
    portal.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    rule = {"enabled": "on", "threshold": "40", "pack": PACK, "daily_cap": "2"}

    refused = portal.post("/portal/billing/auto-recharge/", rule, follow=True)
    assert "buy a credit pack once" in refused.content.decode()  # no card saved yet
    assert not AutoRecharge.objects.exists()
    page = portal.get("/portal/billing/").content.decode()
    assert 'id="auto-recharge-form"' in page and "buy a pack once to save it" in page

    _buy_pack_at_checkout(client, auth_headers, stripe_api, "pm_card_visa")
    done = portal.post("/portal/billing/auto-recharge/", rule, follow=True).content.decode()
    assert "Auto-recharge is on: below 40 credits, 100 credits is bought with your Visa" in done
    assert AutoRecharge.objects.get(user=user).enabled

    _falls_to(flash_peer, user, 12)
    page = portal.get("/portal/billing/").content.decode()
    assert "Visa card ending 4242" in page and 'id="recharges"' in page
    assert "$4.99" in page and "Paid" in page
    bad = portal.post("/portal/billing/auto-recharge/", {**rule, "daily_cap": "99"}, follow=True)
    assert "daily cap" in bad.content.decode()
    off = portal.post("/portal/billing/auto-recharge/", {**rule, "enabled": ""}, follow=True)
    assert "Auto-recharge is off." in off.content.decode()
    assert not AutoRecharge.objects.get(user=user).enabled
    assert not LowBalanceAlert.objects.filter(purpose=WatchPurpose.RECHARGE).exists()


def test_billing_staff_turn_a_rule_off_support_cannot(
    client: Client, user: Any, auth_headers: dict[str, Any], card_saved: int
) -> None:
    assert _turn_on(client, auth_headers).status_code == 200
    rule = AutoRecharge.objects.get(user=user)
    action = {"action": "turn_off", ACTION_CHECKBOX_NAME: [str(rule.pk)]}

    support, _ = staff_signed_in("support")
    support.post("/admin/payments/autorecharge/", action)
    assert AutoRecharge.objects.get(pk=rule.pk).enabled  # view only

    billing, staff = staff_signed_in("billing")
    done = billing.post("/admin/payments/autorecharge/", action, follow=True)
    assert "1 auto-recharge(s) turned off." in done.content.decode()
    assert not AutoRecharge.objects.get(pk=rule.pk).enabled
    assert not LowBalanceAlert.objects.filter(purpose=WatchPurpose.RECHARGE).exists()
    assert LogEntry.objects.get(user=staff).change_message == "Turned auto-recharge off."
