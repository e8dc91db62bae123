"""The Stripe-compatible server's card payments, mixed into `StripePeer`: Stripe's documented test
payment methods, customers' saved cards and default payment method, PaymentIntents on and off
session, and the events they send.

- Test payment methods (docs.stripe.com/testing): `pm_card_visa` and the others in `TEST_CARDS`
  stand for a card; using one makes a new `pm_…` PaymentMethod for it, as Stripe does.
  `pm_card_chargeDeclined` (and the other `chargeDeclined…`) are declined, also when attached to a
  customer (the card is checked); `pm_card_chargeCustomerFail` attaches, then every charge is
  declined; `pm_card_authenticationRequired` needs 3D Secure on every payment: on session the
  customer completes it (Checkout's page), off session the payment fails with
  `authentication_required`, or stays `requires_action` when the request did not say off session.
- `POST /v1/payment_methods/{id}/attach` / `detach`, `GET /v1/payment_methods?customer=`,
  `GET /v1/customers/{id}/payment_methods`, and `POST /v1/customers/{id}` with
  `invoice_settings[default_payment_method]` (only a method attached to that customer).
- `POST /v1/payment_intents` with `confirm`, `off_session`, `setup_future_usage` and metadata:
  succeeded (a charge, `payment_intent.succeeded`), or a 402 card error carrying the
  PaymentIntent, left `requires_payment_method` (`payment_intent.payment_failed`).
- Idempotency keys as Stripe keeps them (`StripePeer.handle`): a POST repeated with the same
  `Idempotency-Key` and parameters gets the first answer again (card errors included) and makes
  nothing; with other parameters, a 400 `idempotency_error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devpeers.stripe_objects import PeerParts, StripeError, charge_object, flag, published


@dataclass(frozen=True)
class TestCard:
    brand: str
    last4: str
    declined: str = ""  # a charge fails with this error code…
    decline_code: str = ""  # …and this decline code
    attach_declined: bool = False  # attaching it to a customer fails: the card check declines
    authentication: bool = False  # every payment needs 3D Secure


TEST_CARDS: dict[str, TestCard] = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_chargeDeclined": TestCard(
        "visa", "0002", "card_declined", "generic_decline", attach_declined=True
    ),
    "pm_card_chargeDeclinedInsufficientFunds": TestCard(
        "visa", "9995", "card_declined", "insufficient_funds", attach_declined=True
    ),
    "pm_card_chargeDeclinedExpiredCard": TestCard(
        "visa", "0069", "expired_card", "expired_card", attach_declined=True
    ),
    "pm_card_chargeCustomerFail": TestCard("visa", "0341", "card_declined", "generic_decline"),
    "pm_card_authenticationRequired": TestCard("visa", "3184", authentication=True),
}
MESSAGES = {
    "card_declined": "Your card was declined.",
    "expired_card": "Your card has expired.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}
OFF_SESSION = ("true", "one_off", "recurring")  # what `off_session` may say for "yes"
# Fields a PaymentIntent gained after 2024-06-20: an endpoint on that version never sees them.
NEWER_INTENT_FIELDS = ("customer_account", "excluded_payment_method_types", "managed_payments")


def payment_method_object(*, pm_id: str, card: TestCard, customer: str | None, now: int) -> dict:
    example = published("payment_method")["card"]
    return published(
        "payment_method",
        id=pm_id,
        customer=customer,
        created=now,
        metadata={},
        allow_redisplay="always",
        billing_details={
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
        card={
            **example,
            "brand": card.brand,
            "display_brand": card.brand,
            "last4": card.last4,
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": f"fp{card.brand}{card.last4}",
            "generated_from": None,
            "networks": {"available": [card.brand], "preferred": None},
            "wallet": None,
        },
    )


def payment_intent_object(
    *,
    intent_id: str,
    amount: int,
    currency: str,
    customer: str | None,
    payment_method: str | None,
    metadata: dict[str, Any],
    status: str,
    now: int,
    description: str | None = None,
    setup_future_usage: str | None = None,
    latest_charge: str | None = None,
    last_payment_error: dict[str, Any] | None = None,
    next_action: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A card PaymentIntent in the current API version's shape."""
    return published(
        "payment_intent",
        id=intent_id,
        amount=amount,
        amount_capturable=0,
        amount_received=amount if status == "succeeded" else 0,
        automatic_payment_methods=None,
        canceled_at=None,
        capture_method="automatic",
        client_secret=f"{intent_id}_secret_test",
        confirmation_method="automatic",
        created=now,
        currency=currency,
        customer=customer,
        description=description,
        last_payment_error=last_payment_error,
        latest_charge=latest_charge,
        livemode=False,
        metadata=metadata,
        next_action=next_action,
        payment_method=payment_method,
        payment_method_configuration_details=None,
        payment_method_options={"card": {"request_three_d_secure": "automatic"}},
        payment_method_types=["card"],
        processing=None,
        setup_future_usage=setup_future_usage,
        status=status,
        transfer_data=None,
        managed_payments=None,
    )


def legacy_intent(intent: dict[str, Any]) -> dict[str, Any]:
    """A PaymentIntent as an endpoint on the 2024 version receives it."""
    return {k: v for k, v in intent.items() if k not in NEWER_INTENT_FIELDS}


class CardPayments(PeerParts):
    """Cards, saved payment methods and PaymentIntents; `StripePeer` provides the storage, the
    clock and the events."""

    def card_payments_start(self) -> None:
        self.cards: dict[str, TestCard] = {}  # pm id → the test card it stands for
        # Idempotency-Key → (path, parameters, status, answer) of the first request.
        self.idempotent: dict[str, tuple[str, dict[str, Any], int, Any]] = {}
        self.idempotent_replays: list[str] = []  # the keys answered again from `idempotent`

    # --- Payment methods

    def payment_method(self, reference: str) -> dict[str, Any]:
        """The PaymentMethod `reference` names: a stored one, or a new one for a test token."""
        card = TEST_CARDS.get(reference)
        if card is None:
            try:
                return self.get(reference, "payment_method")
            except StripeError:
                raise StripeError(
                    404,
                    f"No such PaymentMethod: '{reference}'",
                    code="resource_missing",
                    param="payment_method",
                ) from None
        method = payment_method_object(
            pm_id=self.new_id("pm"), card=card, customer=None, now=self.now()
        )
        self.cards[method["id"]] = card
        return self.put(method)

    def _card_error(self, code: str, decline_code: str, **more: Any) -> StripeError:
        return StripeError(
            402,
            MESSAGES.get(code, "Your card was declined."),
            kind="card_error",
            code=code,
            decline_code=decline_code,
            doc_url=f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
            **more,
        )

    def payment_method_attach(self, reference: str, customer: str) -> dict[str, Any]:
        self.get(customer, "customer")
        method = self.payment_method(reference)
        card = self.cards.get(method["id"])
        if card is not None and card.attach_declined:
            raise self._card_error(card.declined, card.decline_code)
        if method["customer"] not in (None, customer):
            raise StripeError(
                400, "This PaymentMethod is already attached to a customer.", param="customer"
            )
        if method["customer"] is None:
            method["customer"] = customer
            self.emit("payment_method.attached", method)
        return method

    def payment_method_detach(self, pm_id: str) -> dict[str, Any]:
        method = self.get(pm_id, "payment_method")
        if method["customer"] is None:
            raise StripeError(400, "The payment method you provided is not attached.")
        customer = self.objects.get(method["customer"]) or {}
        settings = customer.get("invoice_settings") or {}
        if settings.get("default_payment_method") == pm_id:
            settings["default_payment_method"] = None
        method["customer"] = None
        self.emit("payment_method.detached", method, {"customer": customer.get("id")})
        return method

    def payment_methods_of(self, customer: str) -> list[dict[str, Any]]:
        """The customer's saved payment methods, newest first."""
        with self.lock:
            found = [
                obj
                for obj in self.objects.values()
                if obj.get("object") == "payment_method" and obj.get("customer") == customer
            ]
        return sorted(found, key=lambda obj: (obj["created"], obj["id"]), reverse=True)

    def customer_update(self, customer_id: str, params: dict[str, Any]) -> dict[str, Any]:
        customer = self.get(customer_id, "customer")
        previous: dict[str, Any] = {}
        wanted = (params.get("invoice_settings") or {}).get("default_payment_method")
        if wanted is not None:
            method = self.objects.get(wanted) if wanted else None
            if wanted and (method is None or method.get("customer") != customer_id):
                raise StripeError(
                    400,
                    f"The customer does not have a payment method with the ID {wanted}. The "
                    "payment method must be attached to the customer.",
                    code="resource_missing",
                    param="invoice_settings[default_payment_method]",
                )
            settings = dict(customer.get("invoice_settings") or {})
            previous["invoice_settings"] = dict(settings)
            settings["default_payment_method"] = wanted or None
            customer["invoice_settings"] = settings
        for name in ("email", "name", "description"):
            if name in params and customer.get(name) != params[name]:
                previous[name] = customer.get(name)
                customer[name] = params[name]
        if "metadata" in params:
            previous["metadata"] = customer.get("metadata")
            merged = {**(customer.get("metadata") or {}), **(params["metadata"] or {})}
            customer["metadata"] = {k: v for k, v in merged.items() if v != ""}
        self.emit("customer.updated", customer, previous)
        return customer

    # --- PaymentIntents

    def payment_intent_create(self, params: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/payment_intents`: created, and with `confirm` charged at once."""
        try:
            amount = int(params.get("amount") or 0)
        except ValueError:
            amount = 0
        if amount < 50:
            raise StripeError(400, "Amount must be at least $0.50 usd.", param="amount")
        if not params.get("currency"):
            raise StripeError(400, "Missing required param: currency.", param="currency")
        customer = str(params.get("customer") or "") or None
        if customer is not None:
            self.get(customer, "customer")
        confirm, off_session = flag(params.get("confirm")), params.get("off_session")
        if off_session is not None and not confirm:
            raise StripeError(
                400, "off_session can only be used when confirm=true.", param="off_session"
            )
        method = None
        if params.get("payment_method"):
            method = self.payment_method(str(params["payment_method"]))
            if customer is not None and method["customer"] not in (None, customer):
                raise StripeError(
                    400,
                    f"The customer does not have a payment method with the ID {method['id']}.",
                    code="resource_missing",
                    param="payment_method",
                )
        if confirm and method is None:
            raise StripeError(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        intent = self.payment_intent_open(
            customer=customer,
            amount=amount,
            currency=str(params["currency"]),
            method=method,
            metadata=dict(params.get("metadata") or {}),
            setup_future_usage=params.get("setup_future_usage"),
            description=params.get("description"),
        )
        if confirm:
            present = "off" if str(off_session).lower() in OFF_SESSION else "server"
            self.payment_intent_confirm(intent, customer_present=present)
        return intent

    def payment_intent_open(
        self,
        *,
        customer: str | None,
        amount: int,
        currency: str,
        method: dict[str, Any] | None,
        metadata: dict[str, Any],
        setup_future_usage: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """A new PaymentIntent, not confirmed yet (`payment_intent.created`)."""
        intent = payment_intent_object(
            intent_id=self.new_id("pi"),
            amount=amount,
            currency=currency,
            customer=customer,
            payment_method=method["id"] if method else None,
            metadata=metadata,
            status="requires_confirmation" if method else "requires_payment_method",
            now=self.now(),
            description=description,
            setup_future_usage=setup_future_usage,
        )
        self.put(intent)
        self.emit("payment_intent.created", intent)
        return intent

    def payment_intent_confirm(self, intent: dict[str, Any], *, customer_present: str) -> None:
        """Charge the intent's card as its bank answers. `customer_present`: "page" (Checkout's
        page: the customer completes 3D Secure there), "server" (confirmed by the server
        without saying off session: authentication leaves it `requires_action`) or "off" (off
        session: nobody can authenticate, so it fails `authentication_required`)."""
        method = self.get(str(intent["payment_method"]), "payment_method")
        card = self.cards.get(method["id"], TEST_CARDS["pm_card_visa"])
        failure, decline_code = card.declined, card.decline_code
        if not failure and card.authentication and customer_present == "off":
            failure = decline_code = "authentication_required"
        elif not failure and card.authentication and customer_present == "server":
            intent.update(
                status="requires_action",
                next_action={
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {"type": "three_d_secure_redirect"},
                },
            )
            self.emit("payment_intent.requires_action", intent)
            return
        charge = charge_object(
            charge_id=self.new_id("ch"),
            customer=str(intent["customer"] or ""),
            payment_intent=intent["id"],
            amount=int(intent["amount"]),
            now=self.now(),
            payment_method=method["id"],
            failure=(failure, MESSAGES.get(failure, "")) if failure else None,
        )
        self.put(charge)
        intent["latest_charge"] = charge["id"]
        if failure:
            message = MESSAGES.get(failure, "Your card was declined.")
            intent.update(
                status="requires_payment_method",
                last_payment_error={
                    "type": "card_error",
                    "code": failure,
                    "decline_code": decline_code,
                    "message": message,
                    "charge": charge["id"],
                    "payment_method": dict(method),
                },
            )
            self.emit("charge.failed", charge)
            self.emit("payment_intent.payment_failed", intent)
            raise self._card_error(
                failure,
                decline_code,
                charge=charge["id"],
                payment_intent=dict(intent),
                payment_method=dict(method),
            )
        if intent.get("setup_future_usage") and intent["customer"] and not method["customer"]:
            method["customer"] = intent["customer"]  # saved for later payments
            self.emit("payment_method.attached", method)
        intent.update(status="succeeded", amount_received=intent["amount"], next_action=None)
        self.emit("charge.succeeded", charge)
        self.emit("payment_intent.succeeded", intent)
