"""Reads for the billing API and the admin."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncDate

from accounts.models import User
from payments import catalogue
from payments.models import AppleNotification, CreditGrant, GrantState, Payment, PaymentProvider
from payments.plans import subscription_plan


def plan_list() -> list[dict[str, Any]]:
    return [
        {
            "name": offer.name,
            "display_name": offer.label,
            "monthly_credits": offer.monthly_credits,
            "price_cents": offer.price_cents,
            "currency": "usd",
            "hd_access": offer.hd_access,
            "api_key_tier": offer.key_tier,
            "purchasable": offer.monthly_credits > 0 and bool(offer.stripe_price_id),
        }
        for offer in catalogue.PLANS.values()
    ]


def pack_list() -> list[dict[str, Any]]:
    return [
        {
            "name": pack.name,
            "display_name": pack.label,
            "credits": pack.credits,
            "price_cents": pack.price_cents,
            "currency": "usd",
            "purchasable": bool(pack.stripe_price_id),
        }
        for pack in catalogue.PACKS.values()
    ]


def grant_list_for_user(*, user: User, limit: int = 100) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(user=user).order_by("-created_at")[:limit]


def payment_list_for_user(*, user: User, limit: int = 100) -> QuerySet[Payment]:
    return Payment.objects.filter(user=user).order_by("-created_at")[:limit]


def subscription_list_for_user(*, user: User) -> list[dict[str, Any]]:
    """The user's subscriptions as mirrored by dj-stripe."""
    from djstripe.models import Subscription

    result = []
    for subscription in Subscription.objects.filter(customer__subscriber=user).order_by("-created"):
        data = subscription.stripe_data or {}
        result.append(
            {
                "id": subscription.id,
                "status": data.get("status", ""),
                "plan": subscription_plan(data),
                "cancel_at_period_end": bool(data.get("cancel_at_period_end")),
                "current_period_end": data.get("current_period_end") or _item_period_end(data),
            }
        )
    return result


def _item_period_end(data: dict[str, Any]) -> Any:
    items = (data.get("items") or {}).get("data") or []
    return items[0].get("current_period_end") if items else None


# --- The admin's billing dashboard (timepoint_billing/admin_site.py)


def revenue_by_day(*, since: date) -> dict[date, int]:
    """Confirmed payment cents per UTC day since `since`, net of refunds (all providers)."""
    rows = (
        Payment.objects.filter(created_at__date__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(gross=Sum("amount_cents"), refunded=Sum("amount_refunded_cents"))
    )
    return {row["day"]: int(row["gross"] or 0) - int(row["refunded"] or 0) for row in rows}


def credits_granted_by_day(*, since: date) -> dict[date, int]:
    """Credits Flash applied per UTC day (sent grants only)."""
    rows = (
        CreditGrant.objects.filter(state=GrantState.SENT, sent_at__date__gte=since)
        .annotate(day=TruncDate("sent_at"))
        .values("day")
        .annotate(credits=Sum("amount"))
    )
    return {row["day"]: int(row["credits"] or 0) for row in rows}


def active_subscriptions_by_plan() -> list[tuple[str, int]]:
    """(plan label, count) of live dj-stripe subscriptions, most popular first."""
    from djstripe.models import Subscription

    counts: dict[str, int] = {}
    for subscription in Subscription.objects.all().only("id", "stripe_data"):
        data = subscription.stripe_data or {}
        if data.get("status") not in ("active", "trialing", "past_due"):
            continue
        offer = catalogue.PLANS.get(subscription_plan(data))
        label = offer.label if offer else "Unknown plan"
        counts[label] = counts.get(label, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def grants_needing_attention() -> QuerySet[CreditGrant]:
    """Grants no worker will finish on its own soon: failed (backing off) or parked for staff."""
    return (
        CreditGrant.objects.filter(state__in=[GrantState.FAILED, GrantState.NEEDS_ATTENTION])
        .select_related("user")
        .order_by("created_at")
    )


def payments_needing_review() -> QuerySet[Payment]:
    """Refunded or disputed payments that staff have not reviewed yet."""
    return Payment.objects.filter(needs_review=True).select_related("user").order_by("-updated_at")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def stripe_export(*, user: User) -> dict[str, Any]:
    """The dj-stripe mirror rows linked to the user: customers, their subscriptions and invoices.
    Charges and payment methods are left out: they hold card details, which the export never
    carries (the `payments` section has every confirmed payment)."""
    from djstripe.models import Customer, Invoice, Subscription

    customers = list(Customer.objects.filter(subscriber=user).order_by("created", "id"))
    subscriptions = Subscription.objects.filter(customer__in=customers).order_by("created", "id")
    invoices = Invoice.objects.filter(customer__in=customers).order_by("created", "id")
    return {
        "customer_ids": [str(customer.id) for customer in customers],
        "customers": [
            {
                "id": str(customer.id),
                "email": customer.email or "",
                "livemode": customer.livemode,
                "created": _iso(customer.created),
            }
            for customer in customers
        ],
        "subscriptions": [
            {
                "id": str(subscription.id),
                "customer_id": str(subscription.customer_id),
                "status": (subscription.stripe_data or {}).get("status", ""),
                "plan": subscription_plan(subscription.stripe_data or {}),
                "cancel_at_period_end": bool(
                    (subscription.stripe_data or {}).get("cancel_at_period_end")
                ),
                "current_period_end": (subscription.stripe_data or {}).get("current_period_end")
                or _item_period_end(subscription.stripe_data or {}),
                "created": _iso(subscription.created),
            }
            for subscription in subscriptions
        ],
        "invoices": [
            {
                "id": str(invoice.id),
                "status": (invoice.stripe_data or {}).get("status", ""),
                "amount_paid": (invoice.stripe_data or {}).get("amount_paid"),
                "currency": (invoice.stripe_data or {}).get("currency", ""),
                "created": _iso(invoice.created),
            }
            for invoice in invoices
        ],
    }


def apple_transaction_export(*, user: User) -> list[dict[str, Any]]:
    """The user's App Store transactions (the payments keyed `apple:<transactionId>`), each with
    the server notifications Apple sent about it (type and date; the signed payload stays)."""
    payments = list(
        Payment.objects.filter(user=user, provider=PaymentProvider.APPLE).order_by(
            "created_at", "id"
        )
    )
    ids = [payment.reference.removeprefix("apple:") for payment in payments]
    notifications: dict[str, list[dict[str, Any]]] = {}
    for notification in AppleNotification.objects.filter(transaction_id__in=ids).order_by(
        "received_at", "id"
    ):
        notifications.setdefault(notification.transaction_id, []).append(
            {
                "type": notification.type,
                "subtype": notification.subtype,
                "received_at": notification.received_at.isoformat(),
            }
        )
    return [
        {
            "transaction_id": transaction_id,
            "product": payment.product,
            "amount_cents": payment.amount_cents,
            "currency": payment.currency,
            "status": payment.status,
            "refunded_at": _iso(payment.refunded_at),
            "created_at": payment.created_at.isoformat(),
            "notifications": notifications.get(transaction_id, []),
        }
        for transaction_id, payment in zip(ids, payments, strict=True)
    ]


def billing_export(sender: object, *, user: Any, **kwargs: object) -> dict[str, object]:
    """`accounts.signals.user_export` receiver: payments, credit grants, the Stripe mirror
    (customer ids, subscriptions, invoices) and Apple transactions. No card data is kept."""
    payments = Payment.objects.filter(user=user).order_by("created_at", "id")
    grants = CreditGrant.objects.filter(user=user).order_by("created_at", "id")
    return {
        "payments": [
            {
                "provider": p.provider,
                "reference": p.reference,
                "product": p.product,
                "amount_cents": p.amount_cents,
                "currency": p.currency,
                "amount_refunded_cents": p.amount_refunded_cents,
                "refunded_at": _iso(p.refunded_at),
                "disputed": p.disputed,
                "status": p.status,
                "created_at": p.created_at.isoformat(),
            }
            for p in payments
        ],
        "credit_grants": [
            {
                "key": g.key,
                "amount": g.amount,
                "source": g.source,
                "transaction_type": g.transaction_type,
                "state": g.state,
                "created_at": g.created_at.isoformat(),
                "sent_at": g.sent_at.isoformat() if g.sent_at else None,
            }
            for g in grants
        ],
        "stripe": stripe_export(user=user),
        "apple_transactions": apple_transaction_export(user=user),
    }
