"""Reading Stripe objects in the shape of the API version that wrote them.

Webhook payloads follow the API version of the webhook endpoint, and both shapes occur while an
account moves: the current one (2025-03-31.basil and later, the code's pin `STRIPE_API_VERSION`)
is read first, the 2024 one as a fallback.

- An invoice names its subscription under `parent.subscription_details` (2024: `subscription`,
  `subscription_details`), its payments through InvoicePayment objects (`payments`, includable;
  2024: `payment_intent`, `charge`).
- A charge no longer names its invoice: the InvoicePayment list links a payment intent to it.
- An invoice line names its price under `pricing.price_details.price` (2024: `price`, `plan`) and
  its proration under `parent.*_details.proration` (2024: `proration`).
- A dispute names its charge and payment intent, never the customer: the charge says.

Only reads live here; the calls to Stripe are in `stripe_client`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from payments import stripe_client


def object_id(value: Any) -> str:
    """A Stripe id from an expandable field (a bare id or an object with an id)."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# --- Invoices


def invoice_subscription(invoice: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(subscription id, the subscription's metadata as of the invoice)."""
    parent = _dict(_dict(invoice.get("parent")).get("subscription_details"))
    legacy = _dict(invoice.get("subscription_details"))
    subscription = object_id(parent.get("subscription")) or object_id(invoice.get("subscription"))
    metadata = _dict(parent.get("metadata")) or _dict(legacy.get("metadata"))
    return subscription, dict(metadata)


def invoice_payment_refs(invoice: dict[str, Any]) -> tuple[str, str]:
    """(payment intent id, charge id) of the payment that paid the invoice; "" when not said.

    Current shape: the paid InvoicePayment among `payments` (present when the invoice was
    fetched with it included; a webhook body usually lacks it). 2024 shape: top-level fields."""
    payment_intent, charge = "", ""
    rows = _dict(invoice.get("payments")).get("data") or []
    paid = [row for row in rows if isinstance(row, dict) and row.get("status") == "paid"]
    for row in paid or [row for row in rows if isinstance(row, dict)]:
        payment = _dict(row.get("payment"))
        payment_intent = payment_intent or object_id(payment.get("payment_intent"))
        charge = charge or object_id(payment.get("charge"))
    payment_intent = payment_intent or object_id(invoice.get("payment_intent"))
    charge = charge or object_id(invoice.get("charge"))
    return payment_intent, charge


def line_price_id(line: dict[str, Any]) -> str:
    """The price a line billed ("" when the line does not say)."""
    details = _dict(_dict(line.get("pricing")).get("price_details"))
    for candidate in (details.get("price"), line.get("price"), line.get("plan")):
        if object_id(candidate):
            return object_id(candidate)
    return ""


def line_is_proration(line: dict[str, Any]) -> bool:
    """A proration line bills (or credits) part of a period under a plan being left or joined,
    never the period the invoice is for."""
    if line.get("proration"):
        return True
    parent = _dict(line.get("parent"))
    return any(
        bool(_dict(parent.get(kind)).get("proration"))
        for kind in ("subscription_item_details", "invoice_item_details")
    )


def invoice_lines_priced(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    """The invoice's lines, each naming its price: the event's copy, or Stripe's when that copy
    lacks a line's price or holds only the first page of lines."""
    listed = _dict(invoice.get("lines"))
    lines = [line for line in listed.get("data") or [] if isinstance(line, dict)]
    complete = not listed.get("has_more") and all(line_price_id(line) for line in lines)
    if not complete and invoice.get("id"):
        lines = stripe_client.invoice_lines(str(invoice["id"]))
    return lines


def invoice_prices_billed(lines: list[dict[str, Any]]) -> list[str]:
    """The prices an invoice bills its period at, from its priced lines (non-proration,
    non-credit). Never from the subscription's metadata: a plan change in the billing portal
    does not update it, so it would name the plan the customer left."""
    return [
        line_price_id(line)
        for line in lines
        if not line_is_proration(line) and int(line.get("amount") or 0) >= 0 and line_price_id(line)
    ]


def invoice_period_end(lines: list[dict[str, Any]]) -> int | None:
    """When the period an invoice bills ends (its non-proration lines' period), unix time."""
    ends = [
        int(_dict(line.get("period")).get("end") or 0)
        for line in lines
        if not line_is_proration(line)
    ]
    latest = max(ends, default=0)
    return latest or None


@dataclass(frozen=True)
class ProrationLine:
    price: str
    amount: int  # cents; a credit for unused time is negative
    quantity: int


def invoice_prorations(lines: list[dict[str, Any]]) -> list[ProrationLine]:
    """The proration lines among an invoice's priced lines: the unused time of a plan left
    (negative) and the rest of the period under the plan joined."""
    return [
        ProrationLine(
            line_price_id(line), int(line.get("amount") or 0), int(line.get("quantity") or 1)
        )
        for line in lines
        if line_is_proration(line) and line_price_id(line)
    ]


# --- Charges, refunds and disputes


@dataclass(frozen=True)
class ChargeRefs:
    """What a charge, refund or dispute says about the purchase it belongs to."""

    charge: str
    payment_intent: str
    invoice: str
    customer: str
    amount: int
    currency: str
    metadata: dict[str, Any]

    def filled_from(self, other: ChargeRefs) -> ChargeRefs:
        """These refs, with what they lack taken from `other` (the same charge, fetched)."""
        return replace(
            self,
            payment_intent=self.payment_intent or other.payment_intent,
            invoice=self.invoice or other.invoice,
            customer=self.customer or other.customer,
            amount=self.amount or other.amount,
            currency=self.currency or other.currency,
            metadata=self.metadata or other.metadata,
        )


def charge_refs(obj: dict[str, Any]) -> ChargeRefs:
    """Refs from a charge (`charge.refunded`), a refund or a dispute, in either shape."""
    is_charge = obj.get("object") == "charge" or str(obj.get("id") or "").startswith(("ch_", "py_"))
    charge = str(obj.get("id") or "") if is_charge else object_id(obj.get("charge"))
    return ChargeRefs(
        charge=charge,
        payment_intent=object_id(obj.get("payment_intent")),
        invoice=object_id(obj.get("invoice")),  # 2024 charges only
        customer=object_id(obj.get("customer")),  # charges and refunds; never a dispute
        amount=int(obj.get("amount") or 0),
        currency=str(obj.get("currency") or ""),
        metadata=_dict(obj.get("metadata")) if is_charge else {},
    )


def charge_refs_fetched(refs: ChargeRefs) -> ChargeRefs:
    """`refs` completed from the charge as Stripe has it (customer, payment intent)."""
    if not refs.charge:
        return refs
    return refs.filled_from(charge_refs(stripe_client.charge_retrieve(refs.charge)))


def charge_invoice(refs: ChargeRefs) -> str:
    """The invoice the charge paid ("" for a one-time payment such as a credit pack)."""
    if refs.invoice or not refs.payment_intent:
        return refs.invoice
    return stripe_client.invoice_for_payment_intent(refs.payment_intent)
