"""The Stripe-compatible server's card payments answer the official SDK as Stripe does: a card
saved at Checkout, the customer's default payment method, off-session PaymentIntents that
succeed, are declined or need authentication (Stripe's documented test payment methods), the
events they send, and idempotency keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stripe

from devpeers.stripe_api import LEGACY, StripePeer


def _customer_with_card(fake: StripePeer, client: stripe.StripeClient, card: str) -> str:
    """A customer who bought a pack at Checkout with `card`, saved for later."""
    customer = client.v1.customers.create({"email": "ada@example.com"}).id
    session = fake.api(
        "POST",
        "/v1/checkout/sessions",
        mode="payment",
        customer=customer,
        line_items={"0": {"price": "price_pack_100", "quantity": "1"}},
        payment_intent_data={
            "setup_future_usage": "off_session",
            "metadata": {"package": "100_credits"},
        },
        success_url="http://127.0.0.1/done",
    )
    done = fake.checkout_complete(session["id"], card)
    intent = fake.objects[done["payment_intent"]]
    assert intent["status"] == "succeeded" and intent["setup_future_usage"] == "off_session"
    assert intent["metadata"] == {"package": "100_credits"}
    return customer


def _off_session(client: stripe.StripeClient, customer: str, method: str, key: str) -> Any:
    return client.v1.payment_intents.create(
        {
            "amount": 499,
            "currency": "usd",
            "customer": customer,
            "payment_method": method,
            "confirm": True,
            "off_session": True,
            "metadata": {"tp_recharge": "r1"},
        },
        {"idempotency_key": key},
    )


def test_a_card_saved_at_checkout_pays_off_session_once_per_idempotency_key(peer: Any) -> None:
    fake, client = peer
    customer = _customer_with_card(fake, client, "pm_card_visa")
    (saved,) = client.v1.customers.payment_methods.list(customer).data
    assert saved.card is not None and saved.card.last4 == "4242" and saved.customer == customer
    assert [m.id for m in client.v1.payment_methods.list({"customer": customer}).data] == [saved.id]
    updated = client.v1.customers.update(
        customer, {"invoice_settings": {"default_payment_method": saved.id}}
    )
    assert updated.invoice_settings.default_payment_method == saved.id

    first = _off_session(client, customer, saved.id, "recharge-1")
    again = _off_session(client, customer, saved.id, "recharge-1")

    assert first.status == "succeeded" and first.amount_received == 499
    assert again.id == first.id and fake.idempotent_replays == ["recharge-1"]
    intents = [o for o in fake.objects.values() if o.get("object") == "payment_intent"]
    assert len(intents) == 2  # the checkout's and this one: the repeat made nothing
    succeeded = fake.events_of("payment_intent.succeeded")
    assert [e["data"]["object"]["id"] for e in succeeded][-1] == first.id
    assert succeeded[-1]["data"]["object"]["metadata"] == {"tp_recharge": "r1"}
    charge = client.v1.charges.retrieve(str(first.latest_charge))
    assert charge.paid and charge.payment_intent == first.id

    with pytest.raises(stripe.IdempotencyError):  # the same key for another request
        client.v1.payment_intents.create(
            {"amount": 999, "currency": "usd", "customer": customer},
            {"idempotency_key": "recharge-1"},
        )


def test_a_declined_card_fails_with_the_intent_left_requiring_a_payment_method(
    peer: Any,
) -> None:
    fake, client = peer
    customer = client.v1.customers.create({}).id
    # Declined cards are checked when attached; 0341 attaches, then every charge is declined.
    with pytest.raises(stripe.CardError) as refused:
        client.v1.payment_methods.attach("pm_card_chargeDeclined", {"customer": customer})
    assert refused.value.code == "card_declined"
    method = client.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer})

    with pytest.raises(stripe.CardError) as declined:
        _off_session(client, customer, method.id, "recharge-2")
    with pytest.raises(stripe.CardError) as replayed:  # the same answer again, nothing new
        _off_session(client, customer, method.id, "recharge-2")

    error = declined.value.error
    assert error is not None and error.code == "card_declined"
    assert error.decline_code == "generic_decline" and error.payment_intent is not None
    assert error.payment_intent.status == "requires_payment_method"
    assert replayed.value.error is not None and replayed.value.error.payment_intent is not None
    assert replayed.value.error.payment_intent.id == error.payment_intent.id
    (failed,) = fake.events_of("payment_intent.payment_failed")
    assert failed["data"]["object"]["last_payment_error"]["code"] == "card_declined"
    assert not fake.events_of("payment_intent.succeeded")


def test_authentication_is_completed_on_checkout_and_required_off_session(peer: Any) -> None:
    fake, client = peer
    customer = _customer_with_card(fake, client, "pm_card_authenticationRequired")
    (saved,) = client.v1.customers.payment_methods.list(customer).data

    with pytest.raises(stripe.CardError) as needs_customer:
        _off_session(client, customer, saved.id, "recharge-3")
    error = needs_customer.value.error
    assert error is not None and error.code == "authentication_required"
    assert error.payment_intent is not None
    assert error.payment_intent.status == "requires_payment_method"

    # Confirmed by a server that did not say off session: the customer must act.
    waiting = client.v1.payment_intents.create(
        {
            "amount": 499,
            "currency": "usd",
            "customer": customer,
            "payment_method": saved.id,
            "confirm": True,
        }
    )
    assert waiting.status == "requires_action" and waiting.next_action is not None
    assert fake.events_of("payment_intent.requires_action")


def test_a_default_payment_method_must_be_the_customers_own(peer: Any) -> None:
    _, client = peer
    customer = client.v1.customers.create({}).id
    stranger = client.v1.customers.create({}).id
    theirs = client.v1.payment_methods.attach("pm_card_visa", {"customer": stranger})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.update(
            customer, {"invoice_settings": {"default_payment_method": theirs.id}}
        )
    with pytest.raises(stripe.InvalidRequestError):
        _off_session(client, customer, theirs.id, "recharge-4")


def test_payment_intent_events_in_the_2024_shape_and_held_or_repeated_delivery(
    peer: Any,
) -> None:
    fake, client = peer
    fake.event_version = LEGACY
    customer = _customer_with_card(fake, client, "pm_card_visa")
    event = fake.events_of("payment_intent.succeeded")[-1]
    legacy = json.loads(fake.event_body(event))["data"]["object"]
    assert legacy["object"] == "payment_intent" and "managed_payments" not in legacy
    assert legacy["metadata"] == {"package": "100_credits"}

    sent: list[bytes] = []
    fake._outbox.put = lambda item: sent.append(item[2])  # type: ignore[method-assign]
    fake._receivers.append(("http://127.0.0.1:9/hook", "whsec_x"))
    fake.hold_events = True
    (method,) = fake.payment_methods_of(customer)
    _off_session(client, customer, method["id"], "recharge-5")
    assert sent == []
    fake.release_events()
    kinds = [json.loads(body)["type"] for body in sent]
    assert kinds == ["payment_intent.created", "charge.succeeded", "payment_intent.succeeded"]
    fake.redeliver(json.loads(sent[-1])["id"])
    assert sent[-1] == sent[2]


def test_the_pay_page_offers_the_test_cards(peer: Any) -> None:
    fake, client = peer
    customer = client.v1.customers.create({}).id
    session = fake.api(
        "POST",
        "/v1/checkout/sessions",
        mode="payment",
        customer=customer,
        line_items={"0": {"price": "price_pack_100", "quantity": "1"}},
        payment_intent_data={"setup_future_usage": "off_session"},
        success_url="http://127.0.0.1/done",
    )
    status, page, _ = fake.pay_page("GET", session["id"])
    assert status == 200 and 'value="pm_card_authenticationRequired"' in page
    status, page, _ = fake.pay_page("POST", session["id"], "pm_card_chargeDeclined")
    assert status == 402 and "declined" in page and session["status"] == "open"
    status, _, location = fake.pay_page("POST", session["id"], "pm_card_mastercard")
    assert status == 303 and location == "http://127.0.0.1/done"
    (saved,) = fake.payment_methods_of(customer)
    assert saved["card"]["brand"] == "mastercard" and session["status"] == "complete"
