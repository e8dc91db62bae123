"""Stripe Checkout for credit packs and plans, and the Stripe billing portal."""

from __future__ import annotations

from djstripe.models import Customer

from accounts.models import FREE_PLAN, User
from payments import selectors, stripe_client
from payments.models import CatalogueKind
from timepoint_billing.errors import BadRequest, Conflict, NotFound


def checkout_create(*, user: User, package: str = "", plan: str = "") -> dict[str, str]:
    """A Stripe Checkout session for the price sold under a pack's or a plan's catalogue key
    (payment, or subscription). The price goes into the session's metadata, so what is granted
    is what was sold, whatever the catalogue says by the time the payment lands."""
    if bool(package) == bool(plan):
        raise BadRequest("Send either `package` or `plan`.", code="invalid_request")
    if package:
        item = selectors.item_on_sale(kind=CatalogueKind.PACK, key=package)
        if item is None:
            raise BadRequest(f"Unknown package {package!r}.", code="unknown_package")
        mode, metadata = "payment", {"user_id": str(user.pk), "package": item.key}
    else:
        item = selectors.item_on_sale(kind=CatalogueKind.PLAN, key=plan)
        if item is None:
            raise BadRequest(f"Unknown plan {plan!r}.", code="unknown_plan")
        if selectors.plan_subscription_for_user(user=user) is not None or user.plan != FREE_PLAN:
            raise Conflict(
                "You already have a plan; change it with POST /api/v1/billing/subscription/"
                "change (or in the billing portal).",
                code="already_subscribed",
            )
        mode, metadata = "subscription", {"user_id": str(user.pk), "plan": item.key}
    metadata["price"] = item.stripe_price_id
    price_id = item.stripe_price_id
    customer_id = stripe_client.customer_for_user(user)
    return stripe_client.checkout_session_create(
        customer_id=customer_id,
        mode=mode,
        price_id=price_id,
        metadata=metadata,
        client_reference=str(user.pk),
    )


def billing_portal_create(*, user: User) -> str:
    customer = Customer.objects.filter(subscriber=user).first()
    if customer is None:
        raise NotFound("You have no billing account yet.", code="no_billing_account")
    return stripe_client.billing_portal_session_create(customer_id=str(customer.id))
