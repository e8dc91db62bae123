"""The Stripe-compatible server answers the official SDK as Stripe would: the memo's catalogue,
updates with merged metadata, pagination, Checkout completion, proration to the second, renewals
on its clock, events (and their 2024 shape) and signed delivery."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from devpeers.stripe_api import LEGACY, StripePeer, signature
from devpeers.stripe_billing import add_months

DAY = 86400
START = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())


def _subscribe(fake: StripePeer, customer: str, price: str) -> dict[str, Any]:
    session = fake.api(
        "POST",
        "/v1/checkout/sessions",
        mode="subscription",
        customer=customer,
        line_items={"0": {"price": price, "quantity": "1"}},
        subscription_data={"metadata": {"user_id": "7"}},
        success_url="http://127.0.0.1/done",
    )
    done = fake.checkout_complete(session["id"])
    return fake.objects[done["subscription"]]


def test_the_memo_catalogue_is_listed_newest_first_and_pages(peer: Any) -> None:
    fake, client = peer
    prices = list(client.v1.prices.list({"limit": 2}).auto_paging_iter())
    assert {p.id for p in prices} == {
        "price_plan_explorer",
        "price_plan_historian",
        "price_plan_api_pro",
        "price_pack_100",
        "price_pack_500",
        "price_pack_1000",
    }
    historian = client.v1.prices.retrieve("price_plan_historian")
    assert historian.unit_amount == 1499 and historian.recurring is not None
    assert historian.metadata.to_dict() == {"tp_monthly_credits": "200"}
    product = client.v1.products.retrieve("prod_historian")
    assert product.metadata["tp_plan"] == "historian" and product.metadata["tp_hd_access"] == "true"

    new = client.v1.prices.create(
        {
            "product": "prod_historian",
            "unit_amount": 1999,
            "currency": "usd",
            "recurring": {"interval": "month"},
            "metadata": {"tp_monthly_credits": "300"},
        }
    )
    assert client.v1.prices.list({"limit": 1}).data[0].id == new.id  # newest first
    assert [e["type"] for e in fake.events_of("price.created")][-1:] == ["price.created"]


def test_price_updates_merge_metadata_and_never_change_the_amount(peer: Any) -> None:
    fake, client = peer
    client.v1.prices.update(
        "price_plan_explorer", {"metadata": {"tp_monthly_credits": "100", "note": "x"}}
    )
    client.v1.prices.update("price_plan_explorer", {"metadata": {"note": ""}})
    price = client.v1.prices.retrieve("price_plan_explorer")
    assert price.metadata.to_dict() == {"tp_monthly_credits": "100"}
    updated = fake.events_of("price.updated")
    assert updated[0]["data"]["previous_attributes"]["metadata"] == {"tp_monthly_credits": "50"}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.prices.update("price_plan_explorer", {"unit_amount": 1})  # type: ignore[typeddict-unknown-key]


def test_checkout_subscribes_then_an_upgrade_is_prorated_to_the_second(peer: Any) -> None:
    fake, client = peer
    fake.clock_set(START)
    customer = client.v1.customers.create({"email": "a@example.com"}).id
    subscription = _subscribe(fake, customer, "price_plan_explorer")
    item = subscription["items"]["data"][0]
    assert item["current_period_end"] == int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())
    kinds = [e["type"] for e in fake.events_of()]
    assert kinds[-3:] == [
        "customer.subscription.created",
        "invoice.paid",
        "checkout.session.completed",
    ]

    fake.advance(seconds=int((item["current_period_end"] - START) * 3 / 4))  # a quarter left
    updated = client.v1.subscriptions.update(
        subscription["id"],
        {
            "items": [{"id": item["id"], "price": "price_plan_historian"}],
            "proration_behavior": "always_invoice",
        },
    )
    assert updated["items"]["data"][0]["price"]["id"] == "price_plan_historian"
    (invoice,) = [e["data"]["object"] for e in fake.events_of("invoice.paid")][-1:]
    assert invoice["billing_reason"] == "subscription_update"
    assert [line["amount"] for line in invoice["lines"]["data"]] == [-125, 375]  # 499/4, 1499/4
    assert invoice["amount_paid"] == 250

    fake.decline = "card_declined"
    with pytest.raises(stripe.CardError):
        client.v1.subscriptions.update(
            subscription["id"],
            {
                "items": [{"id": item["id"], "price": "price_plan_api_pro"}],
                "proration_behavior": "always_invoice",
                "payment_behavior": "error_if_incomplete",
            },
        )
    assert fake.objects[subscription["id"]]["items"]["data"][0]["price"]["id"] == (
        "price_plan_historian"
    )


def test_the_clock_renews_at_the_new_price_and_ends_cancelled_subscriptions(peer: Any) -> None:
    fake, client = peer
    fake.clock_set(START)
    customer = client.v1.customers.create({}).id
    subscription = _subscribe(fake, customer, "price_plan_historian")
    item = subscription["items"]["data"][0]
    client.v1.subscriptions.update(
        subscription["id"],
        {
            "items": [{"id": item["id"], "price": "price_plan_explorer"}],
            "proration_behavior": "none",
        },
    )
    assert [e["data"]["object"]["billing_reason"] for e in fake.events_of("invoice.paid")] == [
        "subscription_create"
    ]
    fake.advance(seconds=40 * DAY)
    renewal = fake.events_of("invoice.paid")[-1]["data"]["object"]
    assert renewal["billing_reason"] == "subscription_cycle" and renewal["amount_paid"] == 499
    assert renewal["lines"]["data"][0]["period"]["start"] == add_months(START, 1, 1)

    client.v1.subscriptions.update(subscription["id"], {"cancel_at_period_end": True})
    fake.advance(seconds=40 * DAY)
    assert fake.events_of()[-1]["type"] == "customer.subscription.deleted"
    assert fake.objects[subscription["id"]]["status"] == "canceled"


def test_events_in_the_2024_shape(peer: Any) -> None:
    fake, _ = peer
    fake.clock_set(START)
    customer = fake.api("POST", "/v1/customers")["id"]
    subscription = _subscribe(fake, customer, "price_plan_explorer")
    fake.event_version = LEGACY
    paid = json.loads(fake.event_body(fake.events_of("invoice.paid")[0]))
    invoice = paid["data"]["object"]
    assert paid["api_version"] == LEGACY and invoice["subscription"] == subscription["id"]
    assert invoice["payment_intent"].startswith("pi_") and invoice["charge"].startswith("ch_")
    assert invoice["lines"]["data"][0]["price"]["id"] == "price_plan_explorer"
    created = json.loads(fake.event_body(fake.events_of("customer.subscription.created")[0]))
    assert created["data"]["object"]["current_period_start"] == START


def test_events_are_delivered_signed() -> None:
    received: list[tuple[bytes, str]] = []
    done = threading.Event()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers["Stripe-Signature"]))
            self.send_response(200)
            self.end_headers()
            done.set()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake = StripePeer(catalogue=False)
        fake.deliver_to(f"http://127.0.0.1:{server.server_port}/hook", "whsec_x")
        fake.api("POST", "/v1/products", name="Explorer")
        assert done.wait(10)
    finally:
        server.shutdown()
    body, header = received[0]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    assert header == signature(body, "whsec_x", timestamp)
    assert json.loads(body)["type"] == "product.created"
