"""Stripe: the only module that configures the Stripe SDK and calls Stripe (directly or through
dj-stripe). Transport and API failures become our typed errors here, once.

`STRIPE_API_BASE` points the SDK at a Stripe-compatible server (tests); production refuses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from djstripe.models import Customer, Event, Subscription

from timepoint_billing.errors import PaymentDeclined, UpstreamError, UpstreamUnavailable

STRIPE_TIMEOUT_SECONDS = 10.0
_configured: tuple[str, str, str] | None = None


def configure() -> None:
    """Point the process-wide SDK (which dj-stripe uses too) at the configured key and base."""
    global _configured
    wanted = (settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.STRIPE_API_VERSION)
    if _configured == wanted:
        return
    stripe.api_key = settings.STRIPE_SECRET_KEY or None
    # Every call asks for the version the code reads (dj-stripe reads the same setting), so an
    # SDK upgrade or the account's default version never changes the shapes we get back.
    stripe.api_version = settings.STRIPE_API_VERSION
    stripe.api_base = settings.STRIPE_API_BASE or stripe.DEFAULT_API_BASE
    stripe.enable_telemetry = False
    # The SDK retries connection errors itself with idempotency keys on POSTs.
    stripe.max_network_retries = 0 if settings.STRIPE_API_BASE else 2
    stripe.default_http_client = stripe.RequestsClient(timeout=STRIPE_TIMEOUT_SECONDS)
    _configured = wanted


def _map_error(exc: stripe.StripeError) -> Exception:
    if isinstance(exc, stripe.APIConnectionError):
        return UpstreamUnavailable("Stripe could not be reached.", code="stripe_unavailable")
    return UpstreamError("Stripe rejected the request.", code="stripe_error")


def customer_for_user(user: Any) -> str:
    """The user's Stripe customer id, created once through dj-stripe (linked as its subscriber)."""
    configure()
    try:
        customer, _ = Customer.get_or_create(subscriber=user, metadata={"user_id": str(user.pk)})
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc
    return str(customer.id)


def checkout_session_create(
    *, customer_id: str, mode: str, price_id: str, metadata: dict[str, str], client_reference: str
) -> dict[str, str]:
    configure()
    params: dict[str, Any] = {
        "mode": mode,
        "customer": customer_id,
        "client_reference_id": client_reference,
        "line_items": [{"price": price_id, "quantity": 1}],
        "success_url": settings.CHECKOUT_SUCCESS_URL,
        "cancel_url": settings.CHECKOUT_CANCEL_URL,
        "metadata": metadata,
    }
    if mode == "subscription":
        # Carried onto every invoice of the subscription (subscription_details.metadata).
        params["subscription_data"] = {"metadata": metadata}
    else:
        # The card is saved on the customer for later payments without them (auto-recharge);
        # Checkout shows the customer the terms of that.
        params["payment_intent_data"] = {"metadata": metadata, "setup_future_usage": "off_session"}
    try:
        session = stripe.checkout.Session.create(**params)
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc
    return {"checkout_url": str(session["url"]), "session_id": str(session["id"])}


def billing_portal_session_create(*, customer_id: str) -> str:
    configure()
    try:
        session = stripe.billing_portal.Session.create(
            customer=customer_id, return_url=settings.BILLING_PORTAL_RETURN_URL
        )
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc
    return str(session["url"])


def webhook_verify(*, payload: bytes, signature_header: str) -> bool:
    """True when `Stripe-Signature` is valid for the raw body under any configured secret
    (several during a rotation), with Stripe's 300 s timestamp tolerance."""
    for secret in settings.STRIPE_WEBHOOK_SECRETS:
        try:
            stripe.WebhookSignature.verify_header(
                payload, signature_header, secret, tolerance=stripe.Webhook.DEFAULT_TOLERANCE
            )
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError, IndexError):
            continue
        return True
    return False


def event_mirror(payload: dict[str, Any]) -> None:
    """Let dj-stripe record the event and re-fetch the objects it names (its stock handlers).

    dj-stripe rolls its own work back on failure; the caller keeps our stored event for a retry.
    """
    configure()
    try:
        Event.process(data=payload)
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc


def subscriptions_for_customer(customer_id: str) -> list[dict[str, Any]]:
    """The mirrored subscriptions of one customer (dj-stripe rows, as Stripe data)."""
    return [dict(sub.stripe_data) for sub in Subscription.objects.filter(customer_id=customer_id)]


def subscription_cancel(subscription_id: str) -> None:
    """Cancel a subscription now (account deletion). Failures raise our typed errors."""
    configure()
    try:
        stripe.Subscription.cancel(subscription_id)
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc


def charge_retrieve(charge_id: str) -> dict[str, Any]:
    """One charge as Stripe has it now (a dispute names its charge, not the charge's customer)."""
    configure()
    try:
        return dict(stripe.Charge.retrieve(charge_id).to_dict())
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc


def invoice_for_payment_intent(payment_intent_id: str) -> str:
    """The invoice a payment intent paid, through its InvoicePayment ("" when it paid none).

    Since 2025-03-31 a charge no longer names its invoice; the InvoicePayment list links them."""
    configure()
    try:
        found = stripe.InvoicePayment.list(
            payment={"type": "payment_intent", "payment_intent": payment_intent_id}, limit=10
        )
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc
    for invoice_payment in found.data:
        invoice = invoice_payment.to_dict().get("invoice")
        if isinstance(invoice, dict):
            invoice = invoice.get("id")
        if invoice:
            return str(invoice)
    return ""


def invoice_lines(invoice_id: str) -> list[dict[str, Any]]:
    """Every line of an invoice (a webhook carries only the first page of them)."""
    configure()
    try:
        page = stripe.Invoice.list_lines(invoice_id, limit=100)
        return [dict(line.to_dict()) for line in page.auto_paging_iter()]
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc


def webhook_endpoints() -> list[dict[str, Any]]:
    """The account's webhook endpoints (their `api_version` is null when they follow the
    account's default version)."""
    configure()
    try:
        page = stripe.WebhookEndpoint.list(limit=100)
        return [dict(endpoint.to_dict()) for endpoint in page.auto_paging_iter()]
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc


def webhook_endpoint_create(*, url: str, events: list[str]) -> dict[str, Any]:
    """A webhook endpoint pinned to `STRIPE_API_VERSION`: its payloads keep that shape whatever
    the account's default version becomes. The answer carries the signing secret (only here)."""
    configure()
    params: dict[str, Any] = {  # the SDK types both lists as literals of every name it knows
        "url": url,
        "enabled_events": events,
        "api_version": settings.STRIPE_API_VERSION,
        "description": "timepoint-billing gateway",
    }
    try:
        endpoint = stripe.WebhookEndpoint.create(**params)
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc
    return dict(endpoint.to_dict())


def _plain(obj: stripe.StripeObject) -> dict[str, Any]:
    """The object as Stripe sent it (its JSON), decimal strings kept as strings: `to_dict()`
    turns those into Decimals, which no JSON column stores."""
    plain: dict[str, Any] = json.loads(str(obj))
    return plain


def _list_all(resource: Any) -> list[dict[str, Any]]:
    configure()
    try:
        return [_plain(obj) for obj in resource.list(limit=100).auto_paging_iter()]
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc


def products_list() -> list[dict[str, Any]]:
    """Every product of the account (active or archived), as Stripe has them now."""
    return _list_all(stripe.Product)


def prices_list() -> list[dict[str, Any]]:
    """Every price of the account (active or archived), as Stripe has them now."""
    return _list_all(stripe.Price)


def subscription_retrieve(subscription_id: str) -> dict[str, Any]:
    """One subscription as Stripe has it now."""
    configure()
    try:
        return _plain(stripe.Subscription.retrieve(subscription_id))
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc


def subscription_update(
    subscription_id: str, *, idempotency_key: str, **params: Any
) -> dict[str, Any]:
    """Change a subscription (its item's price, `proration_behavior`, `cancel_at_period_end`).
    A declined or unconfirmed card is 402 `payment_declined`: Stripe changed nothing
    (`payment_behavior=error_if_incomplete`). The key makes a retried change the same change."""
    configure()
    try:
        subscription = stripe.Subscription.modify(
            subscription_id, idempotency_key=idempotency_key, **params
        )
    except stripe.CardError as exc:
        raise PaymentDeclined(
            "Your card was declined; update it in the billing portal and try again.",
            code="payment_declined",
        ) from exc
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc
    return dict(subscription.to_dict())


# --- Saved cards and off-session payments (auto-recharge)


@dataclass(frozen=True)
class SavedCard:
    payment_method: str
    brand: str
    last4: str


def customer_card(customer_id: str) -> SavedCard | None:
    """The card to charge without the customer: their default payment method
    (`invoice_settings.default_payment_method`, which they may set in the billing portal), else
    the newest card saved on them (a Checkout with `setup_future_usage` saves one). None when
    they have no saved card."""
    configure()
    try:
        customer = stripe.Customer.retrieve(customer_id).to_dict()
        default = (customer.get("invoice_settings") or {}).get("default_payment_method")
        if isinstance(default, dict):
            default = default.get("id")
        if default:
            method = stripe.PaymentMethod.retrieve(str(default))
        else:
            found = stripe.Customer.list_payment_methods(customer_id, type="card", limit=1).data
            if not found:
                return None
            method = found[0]
    except stripe.InvalidRequestError as exc:
        if exc.code == "resource_missing":
            return None
        raise _map_error(exc) from exc
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc
    card = method.to_dict().get("card") or {}
    return SavedCard(
        payment_method=str(method.id),
        brand=str(card.get("brand") or ""),
        last4=str(card.get("last4") or ""),
    )


@dataclass(frozen=True)
class OffSessionOutcome:
    """What Stripe said about an off-session payment: `status` is the PaymentIntent's
    (`succeeded`, `processing`, `requires_action`, …) or `failed` for a card error or a refusal,
    with Stripe's `code` (`card_declined`, `authentication_required`, …) and message."""

    status: str
    payment_intent: str = ""
    code: str = ""
    message: str = ""


def payment_off_session(
    *,
    customer_id: str,
    payment_method: str,
    amount: int,
    currency: str,
    description: str,
    metadata: dict[str, str],
    idempotency_key: str,
) -> OffSessionOutcome:
    """Charge a saved card without the customer: a PaymentIntent created with `confirm` and
    `off_session`, under `idempotency_key` (the same key and parameters make one charge, however
    often they are sent). A card error or a refusal is an outcome; trouble reaching Stripe (no
    answer, 5xx, 429, a request with the same key still running) raises our typed error, and the
    outcome is then unknown: the caller asks again with the same key."""
    configure()
    params: dict[str, Any] = {
        "amount": amount,
        "currency": currency,
        "customer": customer_id,
        "payment_method": payment_method,
        "confirm": True,
        "off_session": True,
        "description": description,
        "metadata": metadata,
    }
    try:
        intent = stripe.PaymentIntent.create(**params, idempotency_key=idempotency_key)
    except stripe.CardError as exc:
        body = exc.json_body if isinstance(exc.json_body, dict) else {}
        intent_id = str(((body.get("error") or {}).get("payment_intent") or {}).get("id") or "")
        return OffSessionOutcome(
            status="failed",
            payment_intent=intent_id,
            code=str(exc.code or "card_declined"),
            message=str(exc.user_message or "Your card was declined."),
        )
    except stripe.IdempotencyError as exc:
        # Only our own bug sends other parameters under a recharge's key: never guess.
        raise UpstreamError("Stripe refused a repeated recharge.", code="stripe_error") from exc
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 409:  # the first request with this key is still running
            raise UpstreamUnavailable("Stripe is busy with this recharge.") from exc
        return OffSessionOutcome(
            status="failed",
            code=str(exc.code or "payment_refused"),
            message=str(exc.user_message or "Stripe refused the payment."),
        )
    except stripe.StripeError as exc:
        raise _map_error(exc) from exc
    return OffSessionOutcome(status=str(intent.status), payment_intent=str(intent.id))
