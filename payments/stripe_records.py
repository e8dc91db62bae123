"""What a verified Stripe event means in our records: the grant and payment of a paid checkout or
subscription invoice, and the refunds and disputes staff must review. Every recorder is
idempotent by its grant/payment key (`stripe:<payment intent or invoice>`); `stripe_events` runs
them in the transaction that stores the event."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from django.utils import timezone
from djstripe.models import Customer

from accounts.models import User
from payments import plans, recharge, selectors, stripe_shapes
from payments.grants import grant_create
from payments.models import (
    CatalogueKind,
    CreditGrant,
    GrantSource,
    Payment,
    PaymentProvider,
    StripeWebhookEvent,
)
from payments.stripe_shapes import object_id
from webhooks import services as webhooks

logger = logging.getLogger("timepoint.payments")


def _stripe_user(customer_id: str, metadata: dict[str, Any] | None) -> User | None:
    """The user a Stripe object belongs to: the dj-stripe customer's subscriber, else our
    `user_id` metadata (set by checkout_create, so it arrives signed)."""
    if customer_id:
        customer = Customer.objects.filter(id=customer_id).select_related("subscriber").first()
        if customer is not None and customer.subscriber is not None:
            return customer.subscriber
    user_id = str((metadata or {}).get("user_id") or "")
    if user_id.isdigit():
        return User.objects.filter(pk=int(user_id)).first()
    return None


class NeedsAttention(Exception):
    """The event is stored but the gateway cannot act on it alone; staff must look."""


class RecordLater(Exception):
    """The event names a price the catalogue does not hold yet (its `price.created` may still
    be on its way): the worker records it again after syncing the catalogue from Stripe."""


def _payment_record(*, reference: str, user: User | None, **fields: Any) -> Payment:
    payment, created = Payment.objects.get_or_create(
        reference=reference,
        defaults={"provider": PaymentProvider.STRIPE, "user": user, **fields},
    )
    if not created:
        # An earlier refund/dispute event may have created a bare record: fill it in.
        _payment_fill_in(payment, user=user, **fields)
    return payment


def _payment_fill_in(payment: Payment, *, user: User | None, **fields: Any) -> None:
    """Set what the record does not say yet (never overwrite what it does)."""
    missing = {k: v for k, v in fields.items() if v and not getattr(payment, k)}
    if user is not None and payment.user_id is None:
        missing["user"] = user
    if missing:
        for name, value in missing.items():
            setattr(payment, name, value)
        payment.save(update_fields=[*missing, "updated_at"])


def _record_checkout(event: StripeWebhookEvent, session: dict[str, Any]) -> None:
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        return  # an async payment: checkout.session.async_payment_succeeded will follow
    metadata = session.get("metadata") or {}
    user = _stripe_user(object_id(session.get("customer")), metadata)
    if user is None:
        raise NeedsAttention("No user for this checkout session.")
    # The price checkout_create sold (our metadata, signed back by Stripe); sessions made before
    # prices were recorded name the pack or plan key only.
    price_id = str(metadata.get("price") or "")
    if session.get("mode") == "subscription":
        invoice_id = object_id(session.get("invoice"))
        subscription_id = object_id(session.get("subscription"))
        if not invoice_id or not subscription_id or not price_id:
            return  # invoice.paid grants it
        _subscription_grant(event, user, subscription_id, price_id, invoice_id, session)
        return
    item = selectors.catalogue_item(price_id) if price_id else None
    if item is None:
        item = selectors.item_on_sale(kind=CatalogueKind.PACK, key=str(metadata.get("package")))
    if item is None or item.problems or item.kind != CatalogueKind.PACK:
        raise NeedsAttention("The checkout session names no known credit pack.")
    intent = object_id(session.get("payment_intent"))
    purchase = (item.key, item.name, item.credits, "stripe_purchase")
    paid_by = intent or str(session["id"])
    _purchase_record(event, user, session, purchase, paid_by, stripe_payment_intent=intent)


def _subscription_grant(
    event: StripeWebhookEvent,
    user: User,
    subscription_id: str,
    price_id: str,
    invoice_id: str,
    source: dict[str, Any],
) -> None:
    """A subscription's first period, paid at checkout: its monthly credits on the terms of
    the price sold (the same grant `invoice.paid` makes, keyed on the same invoice)."""
    try:
        terms = plans.period_terms(user=user, subscription_id=subscription_id, price_id=price_id)
    except plans.UnknownPlanPrice as exc:
        raise RecordLater(str(exc)) from exc
    if terms.monthly_credits <= 0:
        raise NeedsAttention(f"The plan {terms.plan!r} grants no monthly credits.")
    purchase = (
        terms.plan,
        selectors.plan_label(terms.plan),
        terms.monthly_credits,
        "subscription_grant",
    )
    _invoice_purchase(event, user, purchase, invoice_id, source)


def _invoice_purchase(
    event: StripeWebhookEvent,
    user: User,
    purchase: tuple[str, str, int, str],
    invoice_id: str,
    source: dict[str, Any],
) -> None:
    payment_intent, charge = stripe_shapes.invoice_payment_refs(source)
    _purchase_record(
        event,
        user,
        source,
        purchase,
        invoice_id,
        stripe_invoice=invoice_id,
        stripe_payment_intent=payment_intent,
        stripe_charge=charge,
    )


def _purchase_record(
    event: StripeWebhookEvent,
    user: User,
    source: dict[str, Any],
    purchase: tuple[str, str, int, str],
    paid_by: str,
    **stripe_refs: str,
) -> CreditGrant:
    """A paid purchase's grant and its payment record, both keyed `stripe:<paid_by>` (the payment
    intent of a pack, the invoice of a plan). `purchase`: (product, label, credits, Flash
    transaction type); `source`: the checkout session or invoice that was paid."""
    product, label, credits, transaction_type = purchase
    key = f"stripe:{paid_by}"
    grant, _ = grant_create(
        key=key,
        user=user,
        amount=credits,
        transaction_type=transaction_type,
        label=label,
        source=GrantSource.STRIPE,
        stripe_event_id=event.stripe_id,
    )
    _payment_record(
        reference=key,
        user=user,
        product=product,
        # A checkout session has only `amount_total`; an invoice says what was paid.
        amount_cents=int(source.get("amount_paid") or source.get("amount_total") or 0),
        currency=str(source.get("currency") or ""),
        grant=grant,
        **stripe_refs,
    )
    return grant


def _record_invoice_paid(event: StripeWebhookEvent, invoice: dict[str, Any]) -> None:
    """A paid subscription invoice grants, once (keyed on the invoice): the monthly credits of
    the period it bills (`subscription_create`, `subscription_cycle`), on the subscriber's terms,
    plus what its prorations give (an upgrade's difference for the rest of the period, on its
    own `subscription_update` invoice or carried onto the next)."""
    subscription_id, metadata = stripe_shapes.invoice_subscription(invoice)
    if not subscription_id:
        return  # not a subscription invoice: nothing to grant
    reason = invoice.get("billing_reason")
    if reason not in (None, "subscription_create", "subscription_cycle", "subscription_update"):
        return  # manual invoices grant nothing; dj-stripe mirrors them
    user = _stripe_user(object_id(invoice.get("customer")), metadata)
    if user is None:
        raise NeedsAttention("Paid subscription invoice with no known user.")
    lines = stripe_shapes.invoice_lines_priced(invoice)
    try:
        upgrade = plans.upgrade_credits(user=user, subscription_id=subscription_id, lines=lines)
        terms = None
        if reason != "subscription_update":
            # What Stripe billed, never metadata.plan: a portal change leaves that behind.
            prices = stripe_shapes.invoice_prices_billed(lines)
            if not prices:
                raise NeedsAttention("Paid subscription invoice with no plan price.")
            terms = plans.period_terms(
                user=user,
                subscription_id=subscription_id,
                price_id=prices[-1],
                period_end=stripe_shapes.invoice_period_end(lines),
            )
            if terms.monthly_credits <= 0:
                raise NeedsAttention(f"The plan {terms.plan!r} grants no monthly credits.")
    except plans.UnknownPlanPrice as exc:
        raise RecordLater(str(exc)) from exc
    if terms is None and upgrade <= 0:
        return  # a downgrade's or an unchanged plan's prorations grant nothing
    subscription = selectors.plan_subscription(subscription_id)
    plan = terms.plan if terms else subscription.plan if subscription else ""
    label = selectors.plan_label(plan)
    if upgrade:
        label += " (upgrade: the rest of the period)" if terms is None else " (with an upgrade)"
    credits = upgrade + (terms.monthly_credits if terms else 0)
    _invoice_purchase(
        event, user, (plan, label, credits, "subscription_grant"), str(invoice["id"]), invoice
    )


def _payment_for_refs(refs: stripe_shapes.ChargeRefs) -> Payment | None:
    lookups = [
        ("stripe_charge", refs.charge),
        ("stripe_payment_intent", refs.payment_intent),
        ("stripe_invoice", refs.invoice),
    ]
    for field, value in lookups:
        if value:
            found = Payment.objects.filter(**{field: value}).first()
            if found is not None:
                return found
    return None


def _payment_for_adjustment(obj: dict[str, Any]) -> Payment:
    """The one payment record of the purchase a charge, refund or dispute belongs to (a pack, a
    subscription's first invoice or a renewal), locked; made (keyed as the purchase's own record
    will be) when the purchase's event has not arrived yet, so that event fills it in.

    Stripe is asked only for what the event and our records leave open: the charge (a dispute's
    customer) and the InvoicePayment that links a payment intent to its invoice."""
    refs = stripe_shapes.charge_refs(obj)
    payment = _payment_for_refs(refs)
    if payment is None or payment.user_id is None:
        if not refs.customer or not refs.payment_intent:
            refs = stripe_shapes.charge_refs_fetched(refs)
        if payment is None:
            refs = replace(refs, invoice=stripe_shapes.charge_invoice(refs))
            payment = _payment_for_refs(refs)
    if payment is None:
        payment = _payment_record(
            reference=f"stripe:{refs.invoice or refs.payment_intent or refs.charge}",
            user=_stripe_user(refs.customer, refs.metadata),
            stripe_payment_intent=refs.payment_intent,
            stripe_invoice=refs.invoice,
            amount_cents=refs.amount,
            currency=refs.currency,
        )
    payment = Payment.objects.select_for_update().get(pk=payment.pk)
    _payment_fill_in(
        payment,
        user=_stripe_user(refs.customer, refs.metadata) if payment.user_id is None else None,
        stripe_charge=refs.charge,
        stripe_payment_intent=refs.payment_intent,
        stripe_invoice=refs.invoice,
    )
    return payment


def _record_refund(charge: dict[str, Any]) -> None:
    payment = _payment_for_adjustment(charge)
    # `amount_refunded` is cumulative on the charge; events may arrive out of order.
    refunded = max(payment.amount_refunded_cents, int(charge.get("amount_refunded") or 0))
    payment.amount_refunded_cents = refunded
    payment.refunded_at = timezone.now()
    payment.needs_review = True  # credits are never taken back silently: staff decide
    payment.save(
        update_fields=["amount_refunded_cents", "refunded_at", "needs_review", "updated_at"]
    )
    webhooks.payment_refunded(payment=payment)
    logger.warning({"event": "payment_refunded", "payment": payment.reference, "cents": refunded})


def _record_dispute(dispute: dict[str, Any]) -> None:
    payment = _payment_for_adjustment(dispute)
    payment.disputed = True
    payment.dispute_reason = str(dispute.get("reason") or "")[:128]
    payment.needs_review = True
    payment.save(update_fields=["disputed", "dispute_reason", "needs_review", "updated_at"])
    logger.warning({"event": "payment_disputed", "payment": payment.reference})


def _recharge_of(intent: dict[str, Any]) -> Any:
    """The auto-recharge an off-session PaymentIntent paid for (locked), None for any other
    (a Checkout purchase's, which `checkout.session.completed` grants)."""
    public_id = str((intent.get("metadata") or {}).get("tp_recharge") or "")
    if not public_id:
        return None
    found = recharge.recharge_for_intent(public_id=public_id)
    if found is None:
        raise NeedsAttention("A PaymentIntent names an auto-recharge we do not have.")
    return found


def _record_intent_succeeded(event: StripeWebhookEvent, intent: dict[str, Any]) -> None:
    """An auto-recharge was paid: grant its pack through the outbox, keyed `stripe:<payment
    intent>` (a duplicated or late event finds the grant; a Checkout purchase's own intent
    carries no `tp_recharge`, so it is granted by its session alone)."""
    paid = _recharge_of(intent)
    if paid is None:
        return
    item = selectors.catalogue_item(paid.stripe_price_id)
    label = f"{item.name if item else paid.pack} (auto-recharge)"
    grant = _purchase_record(
        event,
        paid.user,
        {"amount_total": intent.get("amount_received"), "currency": intent.get("currency")},
        (paid.pack, label, paid.credits, "stripe_purchase"),
        str(intent["id"]),
        stripe_payment_intent=str(intent["id"]),
        stripe_charge=object_id(intent.get("latest_charge")),
    )
    recharge.recharge_succeeded(recharge=paid, payment_intent=str(intent["id"]), grant=grant)


def _record_intent_failed(event: StripeWebhookEvent, intent: dict[str, Any]) -> None:
    """An auto-recharge was declined or needs the customer (the answer may have been lost on
    the way to the worker): fail it, once."""
    failed = _recharge_of(intent)
    if failed is None:
        return
    error = intent.get("last_payment_error") or {}
    code = str(error.get("code") or "card_declined")
    if event.type == "payment_intent.requires_action":
        code = "authentication_required"
    recharge.recharge_failed(
        recharge_id=failed.pk,
        code=code,
        message=str(error.get("message") or ""),
        payment_intent=str(intent["id"]),
    )


# What each recorded event type means; `stripe_events` stores the other types and mirrors them.
RECORDERS: dict[str, Callable[[StripeWebhookEvent, dict[str, Any]], None]] = {
    "checkout.session.completed": _record_checkout,
    "checkout.session.async_payment_succeeded": _record_checkout,
    "invoice.paid": _record_invoice_paid,
    "charge.refunded": lambda event, obj: _record_refund(obj),
    "charge.dispute.created": lambda event, obj: _record_dispute(obj),
    "payment_intent.succeeded": _record_intent_succeeded,
    "payment_intent.payment_failed": _record_intent_failed,
    "payment_intent.requires_action": _record_intent_failed,
}
