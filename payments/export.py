"""The user's billing data for the account export (the `accounts.signals.user_export` receiver)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from djstripe.models import Customer, Invoice, Subscription

from accounts.models import User
from payments.models import AppleNotification, CreditGrant, Payment, PaymentProvider
from payments.selectors import item_period_end, subscription_plan


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def stripe_export(*, user: User) -> dict[str, Any]:
    """The dj-stripe mirror rows linked to the user: customers, their subscriptions and invoices.
    Charges and payment methods are left out: they hold card details, which the export never
    carries (the `payments` section has every confirmed payment)."""
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
                "plan": subscription_plan(str(subscription.id), subscription.stripe_data or {}),
                "cancel_at_period_end": bool(
                    (subscription.stripe_data or {}).get("cancel_at_period_end")
                ),
                "current_period_end": (subscription.stripe_data or {}).get("current_period_end")
                or item_period_end(subscription.stripe_data or {}),
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
