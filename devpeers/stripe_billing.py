"""The Stripe-compatible server's subscriptions, mixed into `StripePeer`: monthly periods on the
calendar (`add_months`), price changes prorated to the second (`prorated`: Stripe's rounding),
invoices paid at once, declines, and a clock as Stripe's test clocks (`clock_set`, `advance`)
that renews subscriptions (a `subscription_cycle` invoice at the item's price) or ends those
cancelled at period end. Also the objects in the current API shape (shared with the test
factories) and the 2024 shape an older webhook endpoint receives (`legacy_shape`).
"""

from __future__ import annotations

import calendar
import copy
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from devpeers.stripe_objects import (
    PUBLISHED,
    PeerParts,
    StripeError,
    charge_object,
    flag,
    form_list,
    published,
)
from devpeers.stripe_payments import legacy_intent


def add_months(moment: int, months: int, anchor_day: int) -> int:
    """`moment` moved by whole calendar months onto the anchor's day of the month (the last day
    when the month is shorter), as Stripe's monthly billing periods move."""
    day = datetime.fromtimestamp(moment, tz=UTC)
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    last = calendar.monthrange(year, month)[1]
    return int(day.replace(year=year, month=month, day=min(anchor_day, last)).timestamp())


def prorated(amount: int, part: Fraction) -> int:
    """`amount` times `part` in whole cents, half up (Stripe's rounding of proration amounts)."""
    exact = Decimal(part.numerator) * amount / Decimal(part.denominator)
    return int(exact.to_integral_value(rounding=ROUND_HALF_UP))


# --- Stripe objects in the current shape (the server's, and the test factories' too)


def item_plan(price: dict[str, Any]) -> dict[str, Any]:
    """The legacy `plan` a subscription item still carries beside its price."""
    return {
        **copy.deepcopy(PUBLISHED["subscription"]["items"]["data"][0]["plan"]),
        "id": price["id"],
        "product": price["product"],
        "amount": price["unit_amount"],
        "amount_decimal": str(price["unit_amount"]),
        "billing_scheme": "per_unit",
        "currency": price.get("currency") or "usd",
        "interval": (price.get("recurring") or {}).get("interval", "month"),
        "interval_count": (price.get("recurring") or {}).get("interval_count", 1),
        "livemode": False,
        "metadata": {},
        "transform_usage": None,
    }


def subscription_object(
    *,
    sub_id: str,
    item_id: str,
    customer: str,
    price: dict[str, Any],
    metadata: dict[str, Any],
    period: tuple[int, int],
    status: str = "active",
    quantity: int = 1,
) -> dict[str, Any]:
    """A subscription to one price, in its first period (which lives on the item since
    2025-03-31.basil)."""
    start, end = period
    item = {
        **copy.deepcopy(PUBLISHED["subscription"]["items"]["data"][0]),
        "id": item_id,
        "object": "subscription_item",
        "price": copy.deepcopy(price),
        "plan": item_plan(price),
        "quantity": quantity,
        "subscription": sub_id,
        "created": start,
        "metadata": {},
        "billing_thresholds": None,
        "current_period_start": start,
        "current_period_end": end,
    }
    return published(
        "subscription",
        id=sub_id,
        customer=customer,
        status=status,
        cancel_at_period_end=False,
        cancel_at=None,
        canceled_at=None,
        ended_at=None,
        trial_start=None,
        trial_end=None,
        start_date=start,
        created=start,
        billing_cycle_anchor=start,
        billing_cycle_anchor_config=None,
        currency=price.get("currency") or "usd",
        latest_invoice=None,
        metadata=metadata,
        pending_update=None,
        pending_invoice_item_interval=None,
        next_pending_invoice_item_invoice=None,
        pause_collection=None,
        transfer_data=None,
        billing_thresholds=None,
        billing_schedules=[],
        cancellation_details={"comment": None, "feedback": None, "reason": None},
        items={
            "object": "list",
            "has_more": False,
            "data": [item],
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
    )


def line_object(
    *,
    line_id: str,
    invoice_id: str,
    amount: int,
    period: tuple[int, int],
    subscription_id: str,
    item_id: str,
    proration: bool,
    price_id: str,
    product_id: str,
    description: str,
    quantity: int = 1,
) -> dict[str, Any]:
    """An invoice line billing a subscription item at a price (a proration when said)."""
    return published(
        "line_item",
        id=line_id,
        invoice=invoice_id,
        amount=amount,
        currency="usd",
        description=description,
        period={"start": period[0], "end": period[1]},
        parent={
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription_id,
                "subscription_item": item_id,
            },
        },
        pricing={
            "type": "price_details",
            "price_details": {"price": price_id, "product": product_id},
            "unit_amount_decimal": str(abs(amount)),
        },
        quantity=quantity,
        subtotal=amount,
    )


def invoice_object(
    *,
    invoice_id: str,
    customer: str,
    subscription_id: str,
    metadata: dict[str, Any],
    reason: str,
    lines: list[dict[str, Any]],
    now: int,
    amount_paid: int | None = None,
) -> dict[str, Any]:
    """A paid subscription invoice; what it totals is what its lines say (a credit, when less
    than nothing, is not paid: Stripe puts it on the customer's balance)."""
    total = sum(int(line["amount"]) for line in lines)
    paid = max(0, total) if amount_paid is None else amount_paid
    return published(
        "invoice",
        id=invoice_id,
        customer=customer,
        billing_reason=reason,
        status="paid",
        amount_due=paid,
        amount_paid=paid,
        amount_remaining=0,
        amount_overpaid=0,
        attempted=True,
        attempt_count=1 if paid else 0,
        auto_advance=False,
        currency="usd",
        created=now,
        effective_at=now,
        period_start=now,
        period_end=now,
        due_date=None,
        next_payment_attempt=None,
        automatically_finalizes_at=None,
        from_invoice=None,
        last_finalization_error=None,
        latest_revision=None,
        shipping_cost=None,
        shipping_details=None,
        test_clock=None,
        number=f"TP-{invoice_id[-6:]}",
        status_transitions={
            "finalized_at": now,
            "marked_uncollectible_at": None,
            "paid_at": now,
            "voided_at": None,
        },
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"subscription": subscription_id, "metadata": metadata},
        },
        lines={
            "object": "list",
            "has_more": False,
            "data": lines,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        total=paid if amount_paid is not None else total,
        subtotal=paid if amount_paid is not None else total,
    )


def invoice_payment_object(
    *, payment_id: str, invoice_id: str, payment_intent: str, amount: int, now: int
) -> dict[str, Any]:
    """The InvoicePayment linking an invoice to the payment intent that paid it."""
    return published(
        "invoice_payment",
        id=payment_id,
        invoice=invoice_id,
        amount_paid=amount,
        amount_requested=amount,
        currency="usd",
        created=now,
        is_default=True,
        livemode=False,
        payment={"type": "payment_intent", "payment_intent": payment_intent},
        status="paid",
        status_transitions={"canceled_at": None, "paid_at": now},
    )


class Subscriptions(PeerParts):
    """Subscriptions, invoices and the clock; `StripePeer` provides the storage, the events and
    the card payments."""

    if TYPE_CHECKING:
        clock: int | None
        decline: str
        _paid_by: dict[str, tuple[str, str]]
        cancelled: list[str]

    def _period_end(self, subscription: dict[str, Any], start: int) -> int:
        anchor = datetime.fromtimestamp(subscription["billing_cycle_anchor"], tz=UTC).day
        return add_months(start, 1, anchor)

    def _item(self, subscription: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = subscription["items"]["data"][0]
        return item

    def _item_price(self, item: dict[str, Any], price: dict[str, Any], quantity: int) -> None:
        item.update(price=copy.deepcopy(price), quantity=quantity, plan=item_plan(price))

    def subscription_create(
        self, *, customer: str, price: dict[str, Any], quantity: int, metadata: dict[str, Any]
    ) -> dict[str, Any]:
        if price.get("type") != "recurring":
            raise StripeError(400, "A subscription needs a recurring price.", param="price")
        now = self.now()
        anchor = datetime.fromtimestamp(now, tz=UTC).day
        subscription = subscription_object(
            sub_id=self.new_id("sub"),
            item_id=self.new_id("si"),
            customer=customer,
            price=price,
            metadata=metadata,
            period=(now, add_months(now, 1, anchor)),
            quantity=quantity,
        )
        self.put(subscription)
        self.emit("customer.subscription.created", subscription)
        return subscription

    def _line(
        self,
        subscription: dict[str, Any],
        price: dict[str, Any],
        amount: int,
        *,
        proration: bool = False,
        start: int | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        """A line billing the subscription's item at `price`, from `start` (default: the
        period's start) to the period's end."""
        item = self._item(subscription)
        return line_object(
            line_id=self.new_id("il"),
            invoice_id="",
            amount=amount,
            period=(
                item["current_period_start"] if start is None else start,
                item["current_period_end"],
            ),
            subscription_id=subscription["id"],
            item_id=item["id"],
            proration=proration,
            price_id=price["id"],
            product_id=price["product"],
            description=description or f"{item['quantity']} x {price['product']}",
            quantity=item["quantity"],
        )

    def _payment(self, customer: str, amount: int) -> tuple[str, str]:
        """A succeeded card payment of `amount` cents: (payment intent id, charge id)."""
        payment_intent, charge_id = self.new_id("pi"), self.new_id("ch")
        self.put(
            charge_object(
                charge_id=charge_id,
                customer=customer,
                payment_intent=payment_intent,
                amount=amount,
                now=self.now(),
            )
        )
        return payment_intent, charge_id

    def invoice_create(
        self, subscription: dict[str, Any], reason: str, lines: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """A finalized invoice of the subscription, paid at once, and `invoice.paid`."""
        now = self.now()
        invoice_id = self.new_id("in")
        for line in lines:
            line["invoice"] = invoice_id
        invoice = invoice_object(
            invoice_id=invoice_id,
            customer=str(subscription["customer"]),
            subscription_id=subscription["id"],
            metadata=dict(subscription.get("metadata") or {}),
            reason=reason,
            lines=lines,
            now=now,
        )
        invoice.update(
            period_start=min(int(line["period"]["start"]) for line in lines),
            period_end=max(int(line["period"]["end"]) for line in lines),
        )
        paid = int(invoice["amount_paid"])
        if paid:
            payment_intent, charge_id = self._payment(str(subscription["customer"]), paid)
            self._paid_by[invoice_id] = (payment_intent, charge_id)
            self.put(
                invoice_payment_object(
                    payment_id=self.new_id("inpay"),
                    invoice_id=invoice_id,
                    payment_intent=payment_intent,
                    amount=paid,
                    now=now,
                )
            )
        subscription["latest_invoice"] = invoice_id
        self.put(invoice)
        self.emit("invoice.paid", invoice)
        return invoice

    def _refuse_if_declined(self) -> None:
        if self.decline:
            raise StripeError(402, "Your card was declined.", kind="card_error", code=self.decline)

    def subscription_update(self, sub_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Stripe's subscription update: metadata, `cancel_at_period_end`, and a new price for
        the item, prorated to the second from `proration_date` (default: now)."""
        with self.lock:
            subscription = self.get(sub_id, "subscription")
            if subscription["status"] == "canceled":
                raise StripeError(400, "A canceled subscription can only update its metadata.")
            before = copy.deepcopy(subscription)
            item = self._item(subscription)
            wanted = [row for row in form_list(params.get("items")) if row.get("price")]
            invoice_lines: list[dict[str, Any]] = []
            if wanted:
                if wanted[0].get("id", item["id"]) != item["id"]:
                    raise StripeError(400, "No such subscription item.", param="items[0][id]")
                old_price = item["price"]
                new_price = self.get(str(wanted[0]["price"]), "price")
                if not new_price["active"]:
                    raise StripeError(400, "The price is not active.", param="items[0][price]")
                quantity = int(wanted[0].get("quantity") or item["quantity"])
                behaviour = str(params.get("proration_behavior") or "create_prorations")
                if behaviour != "none" and new_price["id"] != old_price["id"]:
                    moment = int(params.get("proration_date") or self.now())
                    start, end = item["current_period_start"], item["current_period_end"]
                    left = Fraction(max(0, end - moment), end - start)
                    credit = prorated(int(old_price["unit_amount"]) * item["quantity"], left)
                    charge = prorated(int(new_price["unit_amount"]) * quantity, left)
                    invoice_lines = [
                        self._line(
                            subscription,
                            old_price,
                            -credit,
                            proration=True,
                            start=moment,
                            description=f"Unused time on {old_price['product']}",
                        ),
                        self._line(
                            subscription,
                            new_price,
                            charge,
                            proration=True,
                            start=moment,
                            description=f"Remaining time on {new_price['product']}",
                        ),
                    ]
                    if behaviour == "always_invoice" and charge > credit:
                        self._refuse_if_declined()
                self._item_price(item, new_price, quantity)
            if "cancel_at_period_end" in params:
                ending = flag(params["cancel_at_period_end"])
                subscription["cancel_at_period_end"] = ending
                subscription["cancel_at"] = item["current_period_end"] if ending else None
                subscription["canceled_at"] = self.now() if ending else None
            if "metadata" in params:
                metadata = dict(subscription.get("metadata") or {})
                metadata.update(params["metadata"] or {})
                subscription["metadata"] = {k: v for k, v in metadata.items() if v != ""}
            previous = {
                name: before[name]
                for name in ("items", "cancel_at_period_end", "cancel_at", "metadata")
                if before.get(name) != subscription.get(name)
            }
            if invoice_lines and params.get("proration_behavior") == "always_invoice":
                self.invoice_create(subscription, "subscription_update", invoice_lines)
            self.emit("customer.subscription.updated", subscription, previous)
            return subscription

    def subscription_cancel(self, sub_id: str) -> dict[str, Any]:
        with self.lock:
            subscription = self.get(sub_id, "subscription")
            subscription.update(status="canceled", canceled_at=self.now(), ended_at=self.now())
            self.cancelled.append(sub_id)
            self.emit("customer.subscription.deleted", subscription)
            return subscription

    def clock_set(self, moment: int) -> None:
        """Freeze the clock at `moment` (nothing renews: use `advance` to move forward)."""
        self.clock = int(moment)

    def advance(self, *, seconds: int = 0, to: int | None = None) -> None:
        """Move the clock forward; every period ending on the way renews (a paid
        `subscription_cycle` invoice for the item's price then) or ends the subscription."""
        target = int(to if to is not None else self.now() + seconds)
        while True:
            with self.lock:
                due = sorted(
                    (
                        (self._item(sub)["current_period_end"], sub["id"])
                        for sub in self.objects.values()
                        if sub.get("object") == "subscription"
                        and sub["status"] in ("active", "trialing", "past_due")
                        and self._item(sub)["current_period_end"] <= target
                    ),
                )
                if not due:
                    self.clock = target
                    return
                moment, sub_id = due[0]
                self.clock = moment
                self._renew(self.objects[sub_id])

    def _renew(self, subscription: dict[str, Any]) -> None:
        item = self._item(subscription)
        if subscription["cancel_at_period_end"]:
            subscription.update(status="canceled", ended_at=self.now())
            self.emit("customer.subscription.deleted", subscription)
            return
        before = copy.deepcopy(subscription)
        start = item["current_period_end"]
        item["current_period_start"] = start
        item["current_period_end"] = self._period_end(subscription, start)
        price = item["price"]
        amount = int(price["unit_amount"]) * int(item["quantity"])
        self.invoice_create(
            subscription, "subscription_cycle", [self._line(subscription, price, amount)]
        )
        self.emit("customer.subscription.updated", subscription, {"items": before["items"]})


# --- The 2024 shape (API versions before 2025-03-31.basil), for events to an older endpoint


def _legacy_line(line: dict[str, Any]) -> dict[str, Any]:
    details = (line.get("parent") or {}).get("subscription_item_details") or {}
    price = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
    product = ((line.get("pricing") or {}).get("price_details") or {}).get("product")
    return {
        "id": line["id"],
        "object": "line_item",
        "amount": line["amount"],
        "currency": line["currency"],
        "description": line.get("description"),
        "period": line["period"],
        "proration": bool(details.get("proration")),
        "quantity": line.get("quantity"),
        "subscription": details.get("subscription"),
        "type": "subscription",
        **({"price": {"id": price, "object": "price", "product": product}} if price else {}),
    }


def legacy_shape(
    obj: dict[str, Any], paid_by: dict[str, tuple[str, str]] | None = None
) -> dict[str, Any]:
    """A subscription or an invoice as a 2024 endpoint receives it (`paid_by`: invoice id →
    the payment intent and charge that paid it); other objects unchanged."""
    if obj.get("object") == "subscription":
        item = obj["items"]["data"][0]
        return {
            **obj,
            "current_period_start": item["current_period_start"],
            "current_period_end": item["current_period_end"],
        }
    if obj.get("object") == "payment_intent":
        return legacy_intent(obj)
    if obj.get("object") != "invoice":
        return obj
    details = (obj.get("parent") or {}).get("subscription_details") or {}
    shaped = {k: v for k, v in obj.items() if k not in ("parent", "payments")}
    shaped.update(
        subscription=details.get("subscription"),
        subscription_details={"metadata": details.get("metadata") or {}},
        paid=obj.get("status") == "paid",
        payment_intent=(paid_by or {}).get(obj["id"], ("", ""))[0] or None,
        charge=(paid_by or {}).get(obj["id"], ("", ""))[1] or None,
        lines={**obj["lines"], "data": [_legacy_line(line) for line in obj["lines"]["data"]]},
    )
    return shaped
