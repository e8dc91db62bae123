"""Builders for Stripe objects and events, signed with Stripe's real webhook scheme."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from typing import Any

WEBHOOK_SECRET = "whsec_test_current"
OLD_WEBHOOK_SECRET = "whsec_test_previous"
PRICE_IDS = {
    "100_credits": "price_pack_100",
    "500_credits": "price_pack_500",
    "explorer": "price_plan_explorer",
    "historian": "price_plan_historian",
    "api_pro": "price_plan_api_pro",
}
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000)}{next(_ids):05d}"


def signature(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """`Stripe-Signature`: t=<unix>,v1=HMAC-SHA256(secret, "<t>.<body>")."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or new_id("evt"),
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
            "data": {"object": obj},
        }
    ).encode()


def post_webhook(
    client: Any, body: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> Any:
    return client.post(
        "/api/v1/billing/webhooks/stripe",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature(body, secret, timestamp),
    )


def pack_session(customer: str, user_id: int, package: str = "100_credits") -> dict[str, Any]:
    return {
        "id": new_id("cs"),
        "object": "checkout.session",
        "mode": "payment",
        "customer": customer,
        "client_reference_id": str(user_id),
        "payment_intent": new_id("pi"),
        "payment_status": "paid",
        "status": "complete",
        "amount_total": 499,
        "currency": "usd",
        "metadata": {"user_id": str(user_id), "package": package},
        "livemode": False,
        "created": int(time.time()),
    }


def product(name: str) -> dict[str, Any]:
    return {
        "id": "prod_" + name,
        "object": "product",
        "name": name,
        "active": True,
        "type": "service",
        "livemode": False,
        "created": 1_700_000_000,
        "metadata": {},
    }


def price(name: str, price_id: str) -> dict[str, Any]:
    recurring = not name.endswith("_credits")
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "currency": "usd",
        "product": "prod_" + name,
        "recurring": {"interval": "month", "interval_count": 1} if recurring else None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": 1499,
        "billing_scheme": "per_unit",
        "livemode": False,
        "created": 1_700_000_000,
        "metadata": {},
    }


def subscription(
    customer: str, plan: str, status: str = "active", sub_id: str | None = None
) -> dict[str, Any]:
    sub_id = sub_id or new_id("sub")
    now = int(time.time())
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": False,
        "current_period_start": now,
        "current_period_end": now + 30 * 86400,
        "start_date": now,
        "created": now,
        "livemode": False,
        "metadata": {"plan": plan},
        "collection_method": "charge_automatically",
        "items": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "id": new_id("si"),
                    "object": "subscription_item",
                    "price": price(plan, PRICE_IDS[plan]),
                    "quantity": 1,
                    "subscription": sub_id,
                    "created": now,
                    "metadata": {},
                }
            ],
        },
    }


def invoice(
    customer: str, sub: dict[str, Any], plan: str, billing_reason: str = "subscription_create"
) -> dict[str, Any]:
    return {
        "id": new_id("in"),
        "object": "invoice",
        "customer": customer,
        "subscription": sub["id"],
        "billing_reason": billing_reason,
        "status": "paid",
        "paid": True,
        "amount_paid": 1499,
        "currency": "usd",
        "payment_intent": new_id("pi"),
        "livemode": False,
        "created": int(time.time()),
        "subscription_details": {"metadata": {"plan": plan}},
        "lines": {
            "object": "list",
            "has_more": False,
            "data": [{"id": new_id("il"), "object": "line_item", "price": {"id": PRICE_IDS[plan]}}],
        },
    }


def subscription_session(
    customer: str, user_id: int, plan: str, invoice_id: str, sub_id: str
) -> dict[str, Any]:
    return {
        "id": new_id("cs"),
        "object": "checkout.session",
        "mode": "subscription",
        "customer": customer,
        "client_reference_id": str(user_id),
        "subscription": sub_id,
        "invoice": invoice_id,
        "payment_status": "paid",
        "status": "complete",
        "amount_total": 1499,
        "currency": "usd",
        "metadata": {"user_id": str(user_id), "plan": plan},
        "livemode": False,
        "created": int(time.time()),
    }
