"""Stripe Checkout for credit packs and plans, and the Stripe billing portal."""

from __future__ import annotations

from accounts.models import Plan, User
from payments import catalogue, stripe_client
from timepoint_billing.errors import BadRequest, Conflict, NotFound, ServiceUnavailable


def checkout_create(*, user: User, package: str = "", plan: str = "") -> dict[str, str]:
    """A Stripe Checkout session for a credit pack (payment) or a plan (subscription)."""
    if bool(package) == bool(plan):
        raise BadRequest("Send either `package` or `plan`.", code="invalid_request")
    if package:
        pack = catalogue.PACKS.get(package)
        if pack is None:
            raise BadRequest(f"Unknown package {package!r}.", code="unknown_package")
        price_id, mode = pack.stripe_price_id, "payment"
        metadata = {"user_id": str(user.pk), "package": pack.name}
    else:
        offer = catalogue.PLANS.get(plan)
        if offer is None or offer.name == Plan.FREE:
            raise BadRequest(f"Unknown plan {plan!r}.", code="unknown_plan")
        if user.plan != Plan.FREE:
            raise Conflict(
                "You already have a plan; change or cancel it in the billing portal.",
                code="already_subscribed",
            )
        price_id, mode = offer.stripe_price_id, "subscription"
        metadata = {"user_id": str(user.pk), "plan": offer.name}
    if not price_id:
        raise ServiceUnavailable(
            "This item is not on sale right now.", code="price_not_configured", retry_after=3600
        )
    customer_id = stripe_client.customer_for_user(user)
    return stripe_client.checkout_session_create(
        customer_id=customer_id,
        mode=mode,
        price_id=price_id,
        metadata=metadata,
        client_reference=str(user.pk),
    )


def billing_portal_create(*, user: User) -> str:
    from djstripe.models import Customer

    customer = Customer.objects.filter(subscriber=user).first()
    if customer is None:
        raise NotFound("You have no billing account yet.", code="no_billing_account")
    return stripe_client.billing_portal_session_create(customer_id=str(customer.id))
