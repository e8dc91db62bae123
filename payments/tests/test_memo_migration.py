"""The migrations' data steps: users on the design memo's plans keep what those plans gave (HD
access, key tier), and their live subscriptions keep the memo's terms however the catalogue in
Stripe reads later (grandfathering from the first day)."""

from __future__ import annotations

import importlib
from typing import Any

from django.apps import apps
from django.core.management import call_command
from django.test import Client

from accounts.models import User
from devpeers.stripe_api import StripePeer
from payments.catalogue import catalogue_sync
from payments.models import CreditGrant, PlanSubscription
from payments.tests import factories as f

accounts_0002 = importlib.import_module("accounts.migrations.0002_plans_are_catalogue_keys")
payments_0006 = importlib.import_module("payments.migrations.0006_grandfather_memo_subscribers")


def test_users_on_memo_plans_keep_hd_access_and_their_key_tier(db: Any) -> None:
    for plan in ("free", "explorer", "historian", "api_pro"):
        User.objects.create_user(username=f"u-{plan}", plan=plan)

    accounts_0002.memo_terms_forward(apps, None)

    terms = {
        u.plan: (u.plan_hd_access, u.plan_key_tier, u.has_hd_access) for u in User.objects.all()
    }
    assert terms == {
        "free": (False, "free", False),
        "explorer": (False, "free", False),
        "historian": (True, "free", True),
        "api_pro": (True, "pro", True),
    }


def test_memo_subscribers_keep_the_memo_terms_whatever_stripe_says_later(
    client: Client, user: Any, customer_id: str, stripe_api: StripePeer, flash_peer: Any
) -> None:
    # Before this change: a Historian subscriber dj-stripe mirrors, with no record of terms.
    sub = f.subscription(customer_id, "historian")
    stripe_api.put(sub)
    assert f.post_webhook(client, f.event("customer.subscription.created", sub)).status_code == 200
    call_command("run_grants", "--once")
    PlanSubscription.objects.all().delete()
    user.refresh_from_db()
    assert user.plan == "historian"

    payments_0006.grandfather(apps, None)

    bought = PlanSubscription.objects.get()
    assert (bought.plan, bought.monthly_credits, bought.hd_access) == ("historian", 200, True)
    assert bought.stripe_price_id == f.PRICE_IDS["historian"]

    # Then billing tags the price with other terms; the renewal still grants what they bought.
    stripe_api.api(
        "POST", "/v1/prices/price_plan_historian", metadata={"tp_monthly_credits": "500"}
    )
    catalogue_sync()
    renewal = f.invoice(customer_id, sub, "historian", "subscription_cycle")
    stripe_api.put(renewal)
    assert f.post_webhook(client, f.event("invoice.paid", renewal)).status_code == 200
    call_command("run_grants", "--once")
    assert CreditGrant.objects.get().amount == 200
