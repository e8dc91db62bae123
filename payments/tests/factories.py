"""Builders for Stripe objects and events, signed with Stripe's real webhook scheme.

Every builder speaks one of two API versions (`use_shape`, switched for each payments test by
the `stripe_shape` fixture): the current one (`CURRENT`, the gateway's pin), built from Stripe's
own published example objects (`devpeers/stripe_fixtures.json`, from github.com/stripe/openapi),
and the 2024 one (`LEGACY`), which an endpoint still on an older version sends while the account
moves.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import time
from typing import Any

from devpeers.stripe_billing import (
    invoice_object,
    invoice_payment_object,
    line_object,
    subscription_object,
)
from devpeers.stripe_objects import PUBLISHED, charge_object

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

CURRENT = "2026-05-27.dahlia"  # settings.STRIPE_API_VERSION
LEGACY = "2024-06-20"
SHAPES = (CURRENT, LEGACY)
_shape = CURRENT
FIXTURES = PUBLISHED
# What paid each invoice built here: (payment intent, charge). A current-shape invoice does not
# say it (its InvoicePayment does); tests build the charge and InvoicePayment from this.
_paid_by: dict[str, tuple[str, str]] = {}
_priced_lines: dict[str, list[dict[str, Any]]] = {}  # an unpriced event's lines, as Stripe has them


def use_shape(version: str) -> None:
    global _shape
    assert version in SHAPES, version
    _shape = version


def shape() -> str:
    return _shape


def _published(kind: str, **fields: Any) -> dict[str, Any]:
    """Stripe's published example of `kind`, with `fields` put over it."""
    obj = copy.deepcopy(FIXTURES[kind])
    obj.update(fields)
    return obj


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
            "api_version": _shape,
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
    customer: str,
    plan: str,
    status: str = "active",
    sub_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A subscription to `plan`. `metadata` is what checkout wrote ({"plan": plan}); a plan
    change in the billing portal moves the items' price and leaves the metadata as it was."""
    sub_id = sub_id or new_id("sub")
    now = int(time.time())
    item_price = price(plan, PRICE_IDS[plan])
    item: dict[str, Any] = {
        "id": new_id("si"),
        "object": "subscription_item",
        "price": item_price,
        "quantity": 1,
        "subscription": sub_id,
        "created": now,
        "metadata": {},
    }
    meta = dict(metadata) if metadata is not None else {"plan": plan}
    if _shape == LEGACY:
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
            "metadata": meta,
            "collection_method": "charge_automatically",
            "items": {"object": "list", "has_more": False, "data": [item]},
        }
    return subscription_object(
        sub_id=sub_id,
        item_id=item["id"],
        customer=customer,
        price=item_price,
        metadata=meta,
        period=(now, now + 30 * 86400),
        status=status,
    )


def _line(
    invoice_id: str, sub_id: str, plan: str, proration: bool, amount: int, priced: bool = True
) -> dict[str, Any]:
    """One invoice line billing `plan` (a proration credit when `amount` < 0). `priced=False`:
    the line as an event may carry it, without its price."""
    now = int(time.time())
    price_id = PRICE_IDS[plan]
    if _shape == LEGACY:
        line: dict[str, Any] = {
            "id": new_id("il"),
            "object": "line_item",
            "amount": amount,
            "currency": "usd",
            "period": {"start": now, "end": now + 30 * 86400},
            "proration": proration,
            "quantity": 1,
            "subscription": sub_id,
            "type": "subscription",
        }
        if priced:
            line["price"] = {"id": price_id, "object": "price", "product": "prod_" + plan}
        return line
    line = line_object(
        line_id=new_id("il"),
        invoice_id=invoice_id,
        amount=amount,
        period=(now, now + 30 * 86400),
        subscription_id=sub_id,
        item_id=new_id("si"),
        proration=proration,
        price_id=price_id,
        product_id="prod_" + plan,
        description=f"1 x {plan}",
    )
    if not priced:  # as Stripe's published line shows it: pricing without price_details
        line["pricing"] = copy.deepcopy(FIXTURES["line_item"]["pricing"])
    return line


def invoice(
    customer: str,
    sub: dict[str, Any],
    plan: str,
    billing_reason: str = "subscription_create",
    *,
    lines: list[tuple[str, bool, int]] | None = None,
    priced: bool = True,
) -> dict[str, Any]:
    """A paid invoice of `sub`. `lines`: (plan, proration, amount) for each line, else one line
    billing `plan`; `priced=False` leaves the prices off the lines (Stripe's own lines endpoint
    still has them: the fake serves the stored invoice's lines)."""
    invoice_id = new_id("in")
    payment_intent, charge_id = new_id("pi"), new_id("ch")
    _paid_by[invoice_id] = (payment_intent, charge_id)
    metadata = dict(sub.get("metadata") or {})
    now = int(time.time())
    wanted = lines or [(plan, False, 1499)]
    line_data = [_line(invoice_id, sub["id"], *line, priced=priced) for line in wanted]
    if not priced:
        _priced_lines[invoice_id] = [_line(invoice_id, sub["id"], *line) for line in wanted]
    line_list = {
        "object": "list",
        "has_more": False,
        "data": line_data,
        "url": f"/v1/invoices/{invoice_id}/lines",
    }
    if _shape == LEGACY:
        return {
            "id": invoice_id,
            "object": "invoice",
            "customer": customer,
            "subscription": sub["id"],
            "billing_reason": billing_reason,
            "status": "paid",
            "paid": True,
            "amount_paid": 1499,
            "currency": "usd",
            "payment_intent": payment_intent,
            "charge": charge_id,
            "livemode": False,
            "created": now,
            "subscription_details": {"metadata": metadata},
            "lines": line_list,
        }
    return invoice_object(
        invoice_id=invoice_id,
        customer=customer,
        subscription_id=sub["id"],
        metadata=metadata,
        reason=billing_reason,
        lines=line_data,
        now=now,
        amount_paid=1499,
    )


def as_stripe_has(inv: dict[str, Any]) -> dict[str, Any]:
    """The invoice as Stripe's API returns it: every line with its price."""
    lines = _priced_lines.get(inv["id"])
    if lines is None:
        return inv
    return {**inv, "lines": {**inv["lines"], "data": copy.deepcopy(lines)}}


def invoice_payment(inv: dict[str, Any]) -> dict[str, Any]:
    """The InvoicePayment linking the invoice to the payment intent that paid it (what
    `/v1/invoice_payments` lists; Stripe keeps one for every paid invoice)."""
    payment_intent, _ = _paid_by[inv["id"]]
    return invoice_payment_object(
        payment_id=new_id("inpay"),
        invoice_id=inv["id"],
        payment_intent=payment_intent,
        amount=inv["amount_paid"],
        now=inv["created"],
    )


def charge(
    customer: str, payment_intent: str, amount: int, *, charge_id: str = "", invoice_id: str = ""
) -> dict[str, Any]:
    """A succeeded card charge (2024: it names its invoice; current: it does not)."""
    charge_id = charge_id or new_id("ch")
    if _shape == LEGACY:
        return {
            "id": charge_id,
            "object": "charge",
            "customer": customer,
            "payment_intent": payment_intent,
            "invoice": invoice_id or None,
            "amount": amount,
            "amount_refunded": 0,
            "currency": "usd",
            "paid": True,
            "refunded": False,
            "status": "succeeded",
            "livemode": False,
            "created": int(time.time()),
            "metadata": {},
        }
    return charge_object(
        charge_id=charge_id,
        customer=customer,
        payment_intent=payment_intent,
        amount=amount,
        now=int(time.time()),
    )


def invoice_charge(customer: str, inv: dict[str, Any]) -> dict[str, Any]:
    """The charge that paid `inv`."""
    payment_intent, charge_id = _paid_by[inv["id"]]
    return charge(
        customer, payment_intent, int(inv["amount_paid"]), charge_id=charge_id, invoice_id=inv["id"]
    )


def refunded(paid: dict[str, Any], amount_refunded: int) -> dict[str, Any]:
    """The charge as `charge.refunded` carries it, `amount_refunded` refunded so far."""
    return {
        **paid,
        "amount_refunded": amount_refunded,
        "refunded": amount_refunded >= paid["amount"],
    }


def dispute(paid: dict[str, Any], reason: str = "fraudulent") -> dict[str, Any]:
    """A dispute opened on the charge: it names the charge and payment intent, never the
    customer (in every version)."""
    fields = {
        "id": new_id("dp"),
        "object": "dispute",
        "charge": paid["id"],
        "payment_intent": paid["payment_intent"],
        "amount": paid["amount"],
        "currency": paid["currency"],
        "reason": reason,
        "status": "needs_response",
        "livemode": False,
        "created": int(time.time()),
    }
    if _shape == LEGACY:
        return fields
    return _published("dispute", **fields, balance_transactions=[], metadata={})


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
