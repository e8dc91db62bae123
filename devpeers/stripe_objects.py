"""What the Stripe-compatible server's topics share: Stripe's published example objects, its error
shape, and the charge object (a subscription's invoice, a Checkout payment and a PaymentIntent all
make one)."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Stripe's published example objects (github.com/stripe/openapi fixtures3.json): the shape of
# everything the server makes, with our fields put over them.
PUBLISHED: dict[str, dict[str, Any]] = json.loads(
    Path(__file__).with_name("stripe_fixtures.json").read_text()
)["resources"]


class StripeError(Exception):
    """An API error in Stripe's shape: `{"error": {"type", "message", "code"?, "param"?, …}}`
    (a card error also carries `decline_code`, `payment_intent` and `charge`)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", **more: Any):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": kind, "message": message, **more}}


def flag(value: Any) -> bool:
    """A form-encoded boolean."""
    return str(value).lower() == "true"


def published(kind: str, **fields: Any) -> dict[str, Any]:
    """Stripe's published example of `kind`, with `fields` put over it."""
    obj = copy.deepcopy(PUBLISHED[kind])
    obj.update(fields)
    return obj


def charge_object(
    *,
    charge_id: str,
    customer: str,
    payment_intent: str,
    amount: int,
    now: int,
    payment_method: str | None = None,
    failure: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A card charge: succeeded, or failed with `failure` (code, message)."""
    return published(
        "charge",
        id=charge_id,
        customer=customer,
        payment_intent=payment_intent,
        amount=amount,
        amount_captured=0 if failure else amount,
        amount_refunded=0,
        captured=not failure,
        paid=not failure,
        status="failed" if failure else "succeeded",
        failure_code=failure[0] if failure else None,
        failure_message=failure[1] if failure else None,
        refunded=False,
        currency="usd",
        created=now,
        balance_transaction=None,
        payment_method=payment_method,
        source=None,
        transfer_data=None,
        refunds={**PUBLISHED["charge"]["refunds"], "url": f"/v1/charges/{charge_id}/refunds"},
    )


def form_list(value: Any) -> list[Any]:
    """A form-encoded list (`items[0][...]`, index-keyed) or a real list, in index order."""
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else 0)]
    return list(value or [])


class PeerParts:
    """What the server's topic mixins (`CardPayments`, `Subscriptions`) use of `StripePeer`: its
    storage, ids, clock and events (declared for type checkers; `StripePeer` defines them)."""

    if TYPE_CHECKING:
        lock: threading.RLock
        objects: dict[str, dict[str, Any]]

        def put(self, obj: dict[str, Any]) -> dict[str, Any]: ...
        def get(self, object_id: str, kind: str) -> dict[str, Any]: ...
        def new_id(self, prefix: str) -> str: ...
        def now(self) -> int: ...
        def emit(
            self, kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None
        ) -> None: ...
