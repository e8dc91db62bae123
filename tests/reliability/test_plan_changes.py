"""Pricing as data on the production server (gunicorn, 2 workers) with two `run_grants` workers,
the Stripe-compatible server delivering its webhooks over HTTP: a price's new metadata is what
every worker sells without a restart, and an upgrade whose invoice is delivered late and many
times at once, to both web workers, is granted exactly once."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from payments.tests import factories as f
from tests.reliability.conftest import ProductionGateway, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STRIPE_KEY = "sk_test_51GatewayTestKey0000000000000000"


@pytest.fixture
def production_stack_env(catalogue: Any, settings: Any) -> dict[str, str]:
    """The server and workers talk to the Stripe-compatible server (its catalogue synced into
    the test database first) and accept its signed webhooks."""
    return {
        "STRIPE_API_BASE": settings.STRIPE_API_BASE,
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": f.WEBHOOK_SECRET,
        "GRANT_RETRY_BASE_SECONDS": "0",
    }


@pytest.fixture
def stack(production_stack: Any, catalogue: Any) -> ProductionGateway:
    """The production server and two workers; Stripe's events delivered to the server."""
    server, _ = production_stack
    catalogue.deliver_to(f"{server.url}/api/v1/billing/webhooks/stripe", f.WEBHOOK_SECRET)
    return server


def _each_worker_sells(server: ProductionGateway, plan: str, credits: int) -> bool:
    """Ten answers on fresh connections (both workers answer some) all say so."""
    for _ in range(10):
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as web:
            plans = {row["name"]: row for row in web.get("/api/v1/billing/plans").json()["plans"]}
        if plans.get(plan, {}).get("monthly_credits") != credits:
            return False
    return True


def test_new_prices_everywhere_and_an_upgrade_granted_once(
    stack: ProductionGateway,
    catalogue: Any,
    user: Any,
    session_token: str,
    flash_peer: Any,
) -> None:
    stripe, server = catalogue, stack
    web = httpx.Client(base_url=server.url, timeout=20, trust_env=False)
    auth = {"Authorization": f"Bearer {session_token}"}

    # A billing person edits a price in Stripe: every worker sells the new terms, no restart.
    stripe.api("POST", "/v1/prices/price_plan_explorer", metadata={"tp_monthly_credits": "60"})
    wait_for(lambda: _each_worker_sells(server, "explorer", 60), timeout=30, interval=0.2)

    # Subscribe at the new terms, half a period ago (Stripe's clock).
    start = int(time.time())
    stripe.clock_set(start)
    checkout = web.post("/api/v1/billing/checkout", json={"plan": "explorer"}, headers=auth)
    assert checkout.status_code == 200, checkout.text
    subscription_id = stripe.checkout_complete(checkout.json()["session_id"])["subscription"]
    wait_for(
        lambda: web.get("/api/v1/billing/subscription", headers=auth).status_code == 200,
        timeout=30,
        interval=0.2,
    )
    end = stripe.objects[subscription_id]["items"]["data"][0]["current_period_end"]
    stripe.advance(to=start + (end - start) // 2)

    # The upgrade's events are held back (late), then the invoice arrives six times at once.
    stripe.hold_events = True
    since = len(stripe.events)
    changed = web.post(
        "/api/v1/billing/subscription/change", json={"plan": "historian"}, headers=auth
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["plan"] == "historian"
    paid = next(e for e in stripe.events_of("invoice.paid", since=since))
    body = stripe.event_body(paid)

    def deliver() -> None:
        with httpx.Client(base_url=server.url, timeout=20, trust_env=False) as own:
            answer = own.post(
                "/api/v1/billing/webhooks/stripe",
                content=body,
                headers={"Content-Type": "application/json", "Stripe-Signature": f.signature(body)},
            )
            assert answer.status_code == 200, answer.text

    time.sleep(1.0)
    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stripe.release_events()
    stripe.redeliver(paid["id"])

    marker = f"[grant:stripe:{paid['data']['object']['id']}]"

    def upgrade_rows() -> list[dict[str, Any]]:
        rows = flash_peer.ledger_for(user.flash_user_id)
        return [row for row in rows if marker in (row["description"] or "")]

    wait_for(lambda: len(upgrade_rows()) == 1, timeout=40, interval=0.2)
    time.sleep(2.0)  # every delivery and both workers had their chance to double it
    # (200 - 60) credits for half a month: Stripe billed 750 of 1499 cents → 70 credits.
    assert [row["amount"] for row in upgrade_rows()] == [70]
    granted = [
        row["amount"] for row in flash_peer.ledger_for(user.flash_user_id) if row["amount"] > 0
    ]
    assert granted == [60, 70]
    mine = web.get("/api/v1/billing/subscription", headers=auth).json()
    assert (mine["plan"], mine["monthly_credits"], mine["hd_access"]) == ("historian", 200, True)
    assert "Traceback" not in server.log_tail(400)
