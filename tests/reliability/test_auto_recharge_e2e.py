"""Auto-recharge end to end: the production server (2 workers) and two background workers on the
test database and Redis, the Stripe-compatible server delivering its signed webhooks to the
server. The user buys a pack at Checkout (the card is saved), turns auto-recharge on, then four
generations at once take the balance across the threshold while both background workers read
balances and charge recharges: one crossing, one off-session PaymentIntent, one grant — also
when Stripe's `payment_intent.succeeded` comes late and several times at once."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import httpx
import pytest

from payments.tests import factories as f
from tests.reliability.conftest import ProductionGateway, generations_at_once, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STRIPE_TEST_KEY = "sk_test_51GatewayTestKey0000000000000000"  # a key dj-stripe accepts


@pytest.fixture
def production_stack_env(catalogue: Any, settings: Any) -> dict[str, str]:
    """The server and the workers talk to the Stripe-compatible server (its memo catalogue
    synced into the test database first)."""
    return {
        "STRIPE_SECRET_KEY": STRIPE_TEST_KEY,
        "STRIPE_API_BASE": settings.STRIPE_API_BASE,
        "STRIPE_WEBHOOK_SECRET": f.WEBHOOK_SECRET,
        "USER_CONCURRENCY_LIMIT": "10",
        "GRANT_RETRY_BASE_SECONDS": "0.5",
    }


def _recharge_intents(stripe: Any) -> list[dict[str, Any]]:
    return [
        obj
        for obj in list(stripe.objects.values())
        if obj.get("object") == "payment_intent" and (obj.get("metadata") or {}).get("tp_recharge")
    ]


def test_generations_racing_across_the_threshold_recharge_once(
    production_stack: tuple[ProductionGateway, list[subprocess.Popen[bytes]]],
    catalogue: Any,
    user: Any,
    session_token: str,
    flash_peer: Any,
) -> None:
    from alerts.models import LowBalanceCrossing, WatchPurpose
    from payments.models import CreditGrant, GrantState, Recharge, RechargeState

    server, workers = production_stack
    stripe = catalogue
    stripe.deliver_to(f"{server.url}/api/v1/billing/webhooks/stripe", f.WEBHOOK_SECRET)
    web = httpx.Client(
        base_url=server.url,
        timeout=60,
        trust_env=False,
        headers={"Authorization": f"Bearer {session_token}"},
    )

    # A pack bought at Checkout saves the card; its grant lands through the workers.
    checkout = web.post("/api/v1/billing/checkout", json={"package": "100_credits"})
    assert checkout.status_code == 200, checkout.text
    stripe.checkout_complete(checkout.json()["session_id"], "pm_card_visa")
    wait_for(lambda: flash_peer.user_balance(user.flash_user_id) == 150, timeout=60)

    rule = {"enabled": True, "threshold": 138, "pack": "100_credits", "daily_cap": 2}
    turned_on = web.put("/api/v1/billing/auto-recharge", json=rule)
    assert turned_on.status_code == 200, turned_on.text
    assert turned_on.json()["card"] == {"brand": "visa", "last4": "4242"}

    # Stripe is slow to send its webhooks: the payment succeeds, its event comes later.
    stripe.hold_events = True
    assert generations_at_once(web, 4) == [200] * 4  # 150 → 130, across 138 once

    wait_for(lambda: len(_recharge_intents(stripe)) == 1, timeout=60)
    [intent] = _recharge_intents(stripe)
    assert intent["status"] == "succeeded" and intent["amount"] == 499
    wait_for(lambda: Recharge.objects.filter(state=RechargeState.PAID).exists(), timeout=30)
    event = next(
        e
        for e in stripe.events_of("payment_intent.succeeded")
        if e["data"]["object"]["id"] == intent["id"]
    )
    body = stripe.event_body(event)

    def deliver() -> None:  # the same event at once on both server workers, as Stripe may
        signed = {"Stripe-Signature": f.signature(body), "Content-Type": "application/json"}
        web.post("/api/v1/billing/webhooks/stripe", content=body, headers=signed)

    duplicates = [threading.Thread(target=deliver) for _ in range(3)]
    for thread in duplicates:
        thread.start()
    stripe.release_events()  # and Stripe's own delivery, late
    for thread in duplicates:
        thread.join(60)

    key = f"stripe:{intent['id']}"
    wait_for(
        lambda: CreditGrant.objects.filter(key=key, state=GrantState.SENT).exists(), timeout=60
    )
    wait_for(lambda: flash_peer.user_balance(user.flash_user_id) == 230, timeout=30)
    [recharge] = Recharge.objects.all()
    wait_for(lambda: Recharge.objects.get().state == RechargeState.SUCCEEDED, timeout=30)
    assert recharge.key.startswith("crossing:") and recharge.stripe_payment_intent == intent["id"]
    assert LowBalanceCrossing.objects.filter(purpose=WatchPurpose.RECHARGE).count() == 1

    # Every settled generation's check is done by now; nothing more was bought or granted.
    time.sleep(2)
    assert len(_recharge_intents(stripe)) == 1
    assert len(stripe.calls("POST", "/v1/payment_intents")) == 1
    assert CreditGrant.objects.filter(key=key).count() == 1
    assert CreditGrant.objects.count() == 2  # the Checkout pack and the recharge
    assert flash_peer.user_balance(user.flash_user_id) == 230
    body = web.get("/api/v1/billing/auto-recharge").json()
    assert body["enabled"] and [r["state"] for r in body["recent"]] == ["succeeded"]
    assert all(worker.poll() is None for worker in workers), "a worker died"
