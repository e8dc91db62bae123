"""Subscriptions across Stripe's API versions: refunds and disputes on any charge land on the one
payment record of that purchase; a renewal grants the plan Stripe billed, also after a plan change.

Like every payments test, each runs with objects in the current shape and in the 2024 one."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from accounts.models import User
from devpeers.stripe_api import StripePeer
from payments.models import CreditGrant, GrantState, Payment, StripeWebhookEvent
from payments.tests import factories as f


def _flash_grants(flash_peer: Any, user: Any) -> list[dict[str, Any]]:
    return [row for row in flash_peer.ledger_for(user.flash_user_id) if row["amount"] > 0]


def _paid(client: Client, stripe_api: StripePeer, customer: str, inv: dict[str, Any]) -> Any:
    """Stripe holds the invoice, its charge and its InvoicePayment; `invoice.paid` is delivered.
    Returns the charge."""
    paid = f.invoice_charge(customer, inv)
    for obj in (f.as_stripe_has(inv), paid, f.invoice_payment(inv)):
        stripe_api.put(obj)
    assert f.post_webhook(client, f.event("invoice.paid", inv)).status_code == 200
    return paid


def _subscribed_and_renewed(
    client: Client, user: Any, customer: str, stripe_api: StripePeer
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Historian bought through Checkout, then renewed: (first invoice, renewal, renewal charge)."""
    sub = f.subscription(customer, "historian")
    stripe_api.put(sub)
    first = f.invoice(customer, sub, "historian")
    session = f.subscription_session(customer, user.pk, "historian", first["id"], sub["id"])
    assert f.post_webhook(client, f.event("checkout.session.completed", session)).status_code == 200
    _paid(client, stripe_api, customer, first)
    renewal = f.invoice(customer, sub, "historian", billing_reason="subscription_cycle")
    renewal_charge = _paid(client, stripe_api, customer, renewal)
    call_command("run_grants", "--once")
    assert Payment.objects.count() == 2
    return first, renewal, renewal_charge


def test_refund_and_dispute_on_a_renewal_charge_mark_the_renewal_payment(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer, flash_peer: Any
):
    first, renewal, paid = _subscribed_and_renewed(client, user, customer_id, stripe_api)

    refund = f.event("charge.refunded", f.refunded(paid, 500))
    assert f.post_webhook(client, refund).status_code == 200
    assert (
        f.post_webhook(client, f.event("charge.dispute.created", f.dispute(paid))).status_code
        == 200
    )

    assert Payment.objects.count() == 2  # never an orphan record
    marked = Payment.objects.get(reference=f"stripe:{renewal['id']}")
    assert marked.user == user and marked.product == "historian"
    assert marked.amount_refunded_cents == 500 and marked.disputed and marked.needs_review
    assert marked.stripe_charge == paid["id"]
    assert marked.stripe_payment_intent == paid["payment_intent"]
    untouched = Payment.objects.get(reference=f"stripe:{first['id']}")
    assert untouched.status == "paid" and not untouched.needs_review
    # Staff see it where they review refunds and disputes.
    staff = User.objects.create_user(username="support-person", is_staff=True)
    staff.groups.add(Group.objects.get(name="support"))
    admin = Client()
    admin.force_login(staff, backend="django.contrib.auth.backends.ModelBackend")
    listed = admin.get("/admin/payments/payment/", {"needs_review__exact": "1"})
    assert listed.status_code == 200 and list(listed.context["cl"].result_list) == [marked]
    # Credits are never taken back silently: 50 at sign-up, 200 + 200 from the invoices.
    assert flash_peer.user_balance(user.flash_user_id) == 450


def test_dispute_without_a_refund_first_is_recorded_with_its_user(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer
):
    _, renewal, paid = _subscribed_and_renewed(client, user, customer_id, stripe_api)

    body = f.event("charge.dispute.created", f.dispute(paid, reason="product_not_received"))
    assert f.post_webhook(client, body).status_code == 200

    disputed = Payment.objects.get(disputed=True)
    assert disputed.reference == f"stripe:{renewal['id']}"
    assert disputed.user == user and disputed.product == "historian"
    assert disputed.dispute_reason == "product_not_received"
    assert Payment.objects.count() == 2


def test_refund_of_the_first_invoice_marks_the_checkout_payment(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer
):
    first, _, _ = _subscribed_and_renewed(client, user, customer_id, stripe_api)

    paid = f.invoice_charge(customer_id, first)
    assert (
        f.post_webhook(client, f.event("charge.refunded", f.refunded(paid, 1499))).status_code
        == 200
    )

    payment = Payment.objects.get(reference=f"stripe:{first['id']}")
    assert payment.status == "refunded" and payment.user == user and payment.grant is not None
    assert Payment.objects.count() == 2


def test_dispute_before_its_invoice_event_is_one_record_with_user_and_product(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer, flash_peer: Any
):
    """Out of order: the dispute arrives before `invoice.paid`. The dispute names no customer,
    so the charge is fetched; the record is keyed as the invoice's, which fills it in later."""
    sub = f.subscription(customer_id, "historian")
    stripe_api.put(sub)
    renewal = f.invoice(customer_id, sub, "historian", billing_reason="subscription_cycle")
    paid = f.invoice_charge(customer_id, renewal)
    for obj in (renewal, paid, f.invoice_payment(renewal)):
        stripe_api.put(obj)

    assert (
        f.post_webhook(client, f.event("charge.dispute.created", f.dispute(paid))).status_code
        == 200
    )
    early = Payment.objects.get()
    assert early.user == user and early.disputed and early.reference == f"stripe:{renewal['id']}"
    assert stripe_api.calls("GET", f"/v1/charges/{paid['id']}")

    assert f.post_webhook(client, f.event("invoice.paid", renewal)).status_code == 200
    call_command("run_grants", "--once")

    payment = Payment.objects.get()
    assert payment.pk == early.pk and payment.disputed
    assert payment.product == "historian" and payment.grant is not None
    assert len(_flash_grants(flash_peer, user)) == 1


def test_upgrade_then_renewal_grants_the_new_plans_credits_once(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer, flash_peer: Any
):
    sub = f.subscription(customer_id, "historian")
    stripe_api.put(sub)
    assert f.post_webhook(client, f.event("customer.subscription.created", sub)).status_code == 200
    _paid(client, stripe_api, customer_id, f.invoice(customer_id, sub, "historian"))
    call_command("run_grants", "--once")
    assert flash_peer.user_balance(user.flash_user_id) == 250

    # Upgraded in the billing portal: the price moves, our checkout metadata stays "historian".
    upgraded = f.subscription(
        customer_id, "api_pro", sub_id=sub["id"], metadata={"plan": "historian"}
    )
    stripe_api.put(upgraded)
    body = f.event("customer.subscription.updated", upgraded)
    assert f.post_webhook(client, body).status_code == 200
    proration = f.invoice(
        customer_id,
        upgraded,
        "api_pro",
        billing_reason="subscription_update",
        lines=[("historian", True, -1000), ("api_pro", True, 3500)],
    )
    _paid(client, stripe_api, customer_id, proration)
    # The upgrade grants the difference for the rest of the period, in the share of the new
    # price Stripe billed: (1000 - 200) x 3500 / 4999 = 560.1 → 560.
    assert CreditGrant.objects.get(key=f"stripe:{proration['id']}").amount == 560
    # The renewal as the event carries it: lines without their price (Stripe's lines endpoint
    # has them), the subscription's metadata still naming the old plan.
    renewal = f.invoice(customer_id, upgraded, "api_pro", "subscription_cycle", priced=False)
    _paid(client, stripe_api, customer_id, renewal)
    assert f.post_webhook(client, f.event("invoice.paid", renewal)).status_code == 200  # again
    call_command("run_grants", "--once")

    grant = CreditGrant.objects.get(key=f"stripe:{renewal['id']}")
    assert grant.amount == 1000 and grant.state == GrantState.SENT
    assert stripe_api.calls("GET", f"/v1/invoices/{renewal['id']}/lines")
    assert CreditGrant.objects.count() == 3
    assert Payment.objects.get(reference=grant.key).product == "api_pro"
    assert [row["amount"] for row in _flash_grants(flash_peer, user)][-3:] == [200, 560, 1000]
    assert flash_peer.user_balance(user.flash_user_id) == 1810
    user.refresh_from_db()
    assert user.plan == "api_pro"


def test_renewal_carrying_prorations_grants_the_plan_of_its_period(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer
):
    """Prorations of a mid-cycle change land on the next renewal, the old plan's credit line
    first: the period is billed at the new price, and the upgrade's difference for the rest of
    the old period comes with it, in one grant keyed on the invoice."""
    sub = f.subscription(customer_id, "api_pro", metadata={"plan": "historian"})
    renewal = f.invoice(
        customer_id,
        sub,
        "api_pro",
        "subscription_cycle",
        lines=[("historian", True, -1000), ("api_pro", True, 3500), ("api_pro", False, 4999)],
    )
    _paid(client, stripe_api, customer_id, renewal)

    assert CreditGrant.objects.get().amount == 1000 + 560  # (1000 - 200) x 3500 / 4999


def test_renewal_while_stripe_cannot_say_what_was_billed_is_not_lost(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer, flash_peer: Any
):
    """The lines must be fetched and Stripe is down: the webhook fails with JSON and stores
    nothing, so Stripe delivers it again; that delivery grants once."""
    sub = f.subscription(customer_id, "api_pro")
    renewal = f.invoice(customer_id, sub, "api_pro", "subscription_cycle", priced=False)
    stripe_api.put(f.as_stripe_has(renewal))
    body = f.event("invoice.paid", renewal)

    stripe_api.down = True
    response = f.post_webhook(client, body)
    assert response.status_code == 502 and response.json()["code"] == "stripe_error"
    assert StripeWebhookEvent.objects.count() == 0 and CreditGrant.objects.count() == 0

    stripe_api.down = False
    assert f.post_webhook(client, body).status_code == 200
    call_command("run_grants", "--once")
    assert CreditGrant.objects.get().amount == 1000
    assert len(_flash_grants(flash_peer, user)) == 1


def test_every_stripe_call_asks_for_the_pinned_api_version(
    client: Client, user: Any, customer_id: str, auth_headers: dict, stripe_api: StripePeer
):
    """The SDK's own default and the account's default version never decide the shapes the
    gateway reads: the gateway's calls and dj-stripe's re-fetches all send the pin."""
    from djstripe.settings import djstripe_settings

    assert settings.STRIPE_API_VERSION == f.CURRENT == djstripe_settings.STRIPE_API_VERSION
    response = client.post(
        "/api/v1/billing/checkout",
        {"package": "100_credits"},
        content_type="application/json",
        **auth_headers,
    )
    assert response.status_code == 200
    sub = f.subscription(customer_id, "historian")
    stripe_api.put(sub)
    f.post_webhook(client, f.event("customer.subscription.created", sub))
    call_command("run_grants", "--once")  # dj-stripe re-fetches the subscription

    assert stripe_api.calls("POST", "/v1/checkout/sessions")
    assert stripe_api.calls("GET", f"/v1/subscriptions/{sub['id']}")
    assert stripe_api.versions and set(stripe_api.versions) == {settings.STRIPE_API_VERSION}


def test_factories_build_each_shape_as_stripe_publishes_it(stripe_shape: str, customer_id: str):
    """The current shape is Stripe's published example objects with our values: the same fields,
    none of the ones Stripe removed; the 2024 shape still has those."""
    sub = f.subscription(customer_id, "historian")
    inv = f.invoice(customer_id, sub, "historian")
    paid = f.invoice_charge(customer_id, inv)
    if stripe_shape == f.CURRENT:
        for kind, obj in [
            ("invoice", inv),
            ("line_item", inv["lines"]["data"][0]),
            ("charge", paid),
            ("dispute", f.dispute(paid)),
            ("invoice_payment", f.invoice_payment(inv)),
            ("subscription", sub),
        ]:
            assert set(obj) == set(f.FIXTURES[kind]), kind
        assert not {"payment_intent", "charge", "paid", "subscription_details"} & set(inv)
        assert "invoice" not in paid and "current_period_end" not in sub
    else:
        assert inv["subscription"] == sub["id"] and inv["payment_intent"] and inv["charge"]
        assert paid["invoice"] == inv["id"] and "price" in inv["lines"]["data"][0]


def test_staff_retry_while_stripe_is_down_says_so_and_grants_later(
    user: Any, customer_id: str, stripe_api: StripePeer, flash_peer: Any
):
    """A renewal kept for attention (its customer was not linked yet) whose lines must be fetched:
    a staff retry while Stripe is down answers with a message, not an error page, and changes
    nothing; the next retry grants once."""
    from djstripe.models import Customer

    Customer.objects.filter(id=customer_id).update(subscriber=None)
    sub = f.subscription(customer_id, "api_pro", metadata={})
    renewal = f.invoice(customer_id, sub, "api_pro", "subscription_cycle", priced=False)
    stripe_api.put(f.as_stripe_has(renewal))
    assert f.post_webhook(Client(), f.event("invoice.paid", renewal)).status_code == 200
    event = StripeWebhookEvent.objects.get()
    assert event.state == "needs_attention"
    Customer.objects.filter(id=customer_id).update(subscriber=user)  # staff link the customer

    staff = User.objects.create_user(username="billing-person", is_staff=True)
    staff.groups.add(Group.objects.get(name="billing"))
    admin = Client()
    admin.force_login(staff, backend="django.contrib.auth.backends.ModelBackend")
    retry = {"action": "retry", "_selected_action": [event.pk]}

    stripe_api.down = True
    response = admin.post("/admin/payments/stripewebhookevent/", retry, follow=True)
    assert response.status_code == 200
    assert "Stripe rejected the request." in response.content.decode()
    event.refresh_from_db()
    assert event.state == "needs_attention" and CreditGrant.objects.count() == 0

    stripe_api.down = False
    assert admin.post("/admin/payments/stripewebhookevent/", retry).status_code == 302
    call_command("run_grants", "--once")
    assert CreditGrant.objects.get().amount == 1000
    assert len(_flash_grants(flash_peer, user)) == 1


WEBHOOK_URL = "https://api.timepointai.com/api/v1/billing/webhooks/stripe"


def _endpoint_command() -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("stripe_webhook_endpoint", "--url", WEBHOOK_URL, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_webhook_endpoint_is_created_pinned_to_the_code_version(db: Any, stripe_api: StripePeer):
    """Payloads follow the endpoint's version: one left on the account's default would change
    shape when someone upgrades the account in the Dashboard. The command creates it pinned."""
    stripe_api.put(
        {
            "id": "we_dashboard",
            "object": "webhook_endpoint",
            "url": WEBHOOK_URL,
            "api_version": None,  # made in the Dashboard: follows the account's default
            "enabled_events": ["*"],
            "status": "enabled",
        }
    )

    out, err = _endpoint_command()

    (created,) = stripe_api.calls("POST", "/v1/webhook_endpoints")
    assert created["api_version"] == settings.STRIPE_API_VERSION == "2026-05-27.dahlia"
    assert created["url"] == WEBHOOK_URL
    events = set(created["enabled_events"].values())
    assert {"invoice.paid", "charge.refunded", "charge.dispute.created"} <= events
    assert "customer.subscription.updated" in events
    assert "signing secret (shown once): whsec_" in out
    assert "Disable we_dashboard" in err

    # Run again: the pinned endpoint is there, nothing is created twice.
    out, _ = _endpoint_command()
    assert "already sends" in out
    assert len(stripe_api.calls("POST", "/v1/webhook_endpoints")) == 1


def test_webhook_endpoint_command_reports_stripe_failures(db: Any, stripe_api: StripePeer):
    stripe_api.down = True
    with pytest.raises(CommandError, match="Stripe"):
        _endpoint_command()
