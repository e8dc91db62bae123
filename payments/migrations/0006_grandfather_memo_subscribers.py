"""Subscribers from before the catalogue came from Stripe keep what they bought: each live
subscription dj-stripe mirrors gets a PlanSubscription with the terms of the design memo's plan
its user holds (the plan the gateway had set from that subscription). Without this, the first
event after the deploy would take the terms from the price's metadata as Stripe has it then."""

from django.db import migrations

# The memo's plans as payments/catalogue.py defined them until this change: monthly credits,
# HD access, key tier, price in cents.
MEMO_PLANS = {
    "explorer": (50, False, "free", 499),
    "historian": (200, True, "free", 1499),
    "api_pro": (1000, True, "pro", 4999),
}
LIVE = ("active", "trialing", "past_due")


def _item(data):
    items = (data.get("items") or {}).get("data") or []
    return items[0] if items else {}


def grandfather(apps, schema_editor):
    Subscription = apps.get_model("djstripe", "Subscription")
    PlanSubscription = apps.get_model("payments", "PlanSubscription")
    for subscription in Subscription.objects.select_related("customer__subscriber"):
        data = subscription.stripe_data or {}
        user = getattr(subscription.customer, "subscriber", None)
        if user is None or data.get("status") not in LIVE or user.plan not in MEMO_PLANS:
            continue
        price = _item(data).get("price") or {}
        credits, hd_access, key_tier, cents = MEMO_PLANS[user.plan]
        PlanSubscription.objects.get_or_create(
            stripe_subscription_id=subscription.id,
            defaults={
                "user_id": user.pk,
                "plan": user.plan,
                "stripe_price_id": price.get("id", "") if isinstance(price, dict) else str(price),
                "monthly_credits": credits,
                "hd_access": hd_access,
                "key_tier": key_tier,
                "unit_amount": cents,
                "currency": "usd",
                "status": data["status"],
                "cancel_at_period_end": bool(data.get("cancel_at_period_end")),
            },
        )


class Migration(migrations.Migration):
    # Its data step only updates rows already there: a new database skips it (setup_database).
    rewrites_existing_rows_only = True
    dependencies = [
        ("payments", "0005_catalogue_and_plan_subscriptions"),
        ("djstripe", "0003_2_11"),
        ("accounts", "0002_plans_are_catalogue_keys"),
    ]

    operations = [migrations.RunPython(grandfather, migrations.RunPython.noop)]
