"""GET /api/v1/users/me/export carries everything stored about the caller, and nobody else's:
payments, grants, the Stripe mirror (customer, subscriptions, invoices), Apple transactions, every
usage record (no cap) and the daily/monthly roll-ups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts.services import session_create
from devpeers.stripe_api import StripePeer
from metering.models import UsageRecord
from metering.services import flush_usage, usage_rollup, usage_write_batch
from payments import stripe_client
from payments.tests import factories as f
from payments.tests.apple import AppleChain

EXPORT = "/api/v1/users/me/export"
PRODUCT = "com.timepointai.credits100"


@pytest.fixture(scope="module")
def chain() -> AppleChain:
    return AppleChain()


@pytest.fixture(autouse=True)
def apple_settings(settings: Any, tmp_path: Path, chain: AppleChain) -> None:
    root = tmp_path / "AppleRootCA-test.cer"
    root.write_bytes(chain.root_der())
    settings.APPLE_ROOT_CERT_PATHS = [str(root)]
    settings.APPLE_BUNDLE_ID = "com.timepointai.app"
    settings.APPLE_ENVIRONMENT = "Sandbox"
    settings.APPLE_APP_APPLE_ID = 0
    settings.APPLE_PRODUCT_CREDITS = {PRODUCT: 100}


def _billing_history(
    client: Client, stripe_api: StripePeer, chain: AppleChain, user: Any, headers: dict[str, Any]
) -> dict[str, Any]:
    """A pack, a subscription with its first invoice, and an App Store purchase that Apple later
    refunds, all through the gateway's own endpoints; returns the ids Stripe and Apple used."""
    customer = stripe_client.customer_for_user(user)
    pack = f.pack_session(customer, user.pk)
    assert f.post_webhook(client, f.event("checkout.session.completed", pack)).status_code == 200
    sub = f.subscription(customer, "historian")
    stripe_api.put(sub)
    assert f.post_webhook(client, f.event("customer.subscription.created", sub)).status_code == 200
    inv = f.invoice(customer, sub, "historian")
    stripe_api.put(inv)
    assert f.post_webhook(client, f.event("invoice.paid", inv)).status_code == 200
    signed = chain.transaction()
    verified = client.post(
        "/api/v1/billing/verify-receipt",
        {"signed_transaction": signed},
        content_type="application/json",
        **headers,
    )
    assert verified.status_code == 200, verified.content
    refund = client.post(
        "/api/v1/billing/webhooks/apple",
        {"signedPayload": chain.notification("REFUND", signed)},
        content_type="application/json",
    )
    assert refund.status_code == 200
    call_command("run_grants", "--once")
    return {
        "customer": customer,
        "subscription": sub["id"],
        "invoice": inv["id"],
        "pack_intent": pack["payment_intent"],
        "apple": verified.json()["transaction_key"].removeprefix("apple:"),
    }


def _usage(user: Any, count: int, tag: str) -> None:
    now = timezone.now()
    usage_write_batch(
        [
            {
                "request_id": f"{tag}-{n}",
                "user_id": user.pk,
                "api_key_id": None,
                "endpoint": "/api/v1/moments",
                "method": "GET",
                "status": 200 if n % 10 else 502,
                "credits_spent": 0,
                "response_time_ms": 10.0 + n % 7,
                "created_at": now,
            }
            for n in range(count)
        ]
    )


def test_export_has_every_section_with_only_the_callers_rows(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    other_user: Any,
    stripe_api: StripePeer,
    chain: AppleChain,
) -> None:
    other_user.flash_user_id = "flash-other"
    other_user.save(update_fields=["flash_user_id"])
    _, other_token = session_create(user=other_user)
    mine = _billing_history(client, stripe_api, chain, user, auth_headers)
    theirs = _billing_history(
        client, stripe_api, chain, other_user, {"HTTP_AUTHORIZATION": f"Bearer {other_token}"}
    )
    # More records than the old silent 10 000 cap.
    _usage(user, 10_050, "mine")
    _usage(other_user, 30, "theirs")
    flush_usage()
    usage_rollup(days=[timezone.now().date()])
    my_records = UsageRecord.objects.filter(user=user).count()

    response = client.get(EXPORT, **auth_headers)

    assert response.status_code == 200
    body = response.json()
    text = response.content.decode()
    for value in theirs.values():
        assert value not in text

    stripe = body["stripe"]
    assert stripe["customer_ids"] == [mine["customer"]]
    assert [c["id"] for c in stripe["customers"]] == [mine["customer"]]
    assert [(s["id"], s["plan"], s["status"]) for s in stripe["subscriptions"]] == [
        (mine["subscription"], "historian", "active")
    ]
    assert [(i["id"], i["amount_paid"]) for i in stripe["invoices"]] == [(mine["invoice"], 1499)]

    apple = body["apple_transactions"]
    assert [(a["transaction_id"], a["product"], a["status"]) for a in apple] == [
        (mine["apple"], PRODUCT, "refunded")
    ]
    assert [n["type"] for n in apple[0]["notifications"]] == ["REFUND"]

    references = {p["reference"] for p in body["payments"]}
    assert references == {
        f"stripe:{mine['pack_intent']}",
        f"stripe:{mine['invoice']}",
        f"apple:{mine['apple']}",
    }
    assert {g["key"] for g in body["credit_grants"]} == references

    usage = body["usage"]
    assert usage["total_records"] == len(usage["records"]) == my_records > 10_000
    request_ids = {r["request_id"] for r in usage["records"]}
    assert {f"mine-{n}" for n in range(10_050)} <= request_ids
    assert not any(rid.startswith("theirs-") for rid in request_ids)
    assert sum(row["requests"] for row in usage["daily"]) == my_records
    assert sum(row["requests"] for row in usage["monthly"]) == my_records
    moments = [row for row in usage["daily"] if row["endpoint"] == "/api/v1/moments"]
    assert [(row["requests"], row["errors"]) for row in moments] == [(10_050, 1_005)]
    assert [row["day"] for row in moments] == [timezone.now().date().isoformat()]
