"""A Stripe-compatible server (tests and `make run`): a tiny ASGI app served on loopback.

It speaks the part of Stripe's REST API that the gateway and dj-stripe use, with Stripe's own
rules where the gateway depends on them:

- products and prices: create, update (metadata is merged, `""` deletes a key; a price's amount
  cannot change), retrieve, list (newest first; `active`, `product`, `limit`, `starting_after`);
- customers, billing-portal sessions, Checkout sessions (`checkout_complete`, or the pay page at
  `/checkout/<id>` that `make run` links to, completes one as the customer paying would, with one
  of Stripe's test cards);
- card payments (`stripe_payments`): Stripe's test payment methods, saved cards and a customer's
  default payment method, PaymentIntents on and off session (declines, authentication
  required), and idempotency keys kept as Stripe keeps them;
- subscriptions: retrieve, update (a price change with `proration_behavior` `always_invoice`,
  `create_prorations` or `none`, prorated by the second as Stripe does; `cancel_at_period_end`),
  cancel; a declined card (`decline`) refuses an `error_if_incomplete` update with a 402;
- invoices with their lines, InvoicePayments and charges;
- a clock (`clock_set`, `advance`), as Stripe's test clocks: a subscription whose period ends
  renews with a paid `subscription_cycle` invoice, or ends when cancelled at period end;
- events: every change is recorded as a Stripe event (`events`, `GET /v1/events`) and delivered,
  signed with Stripe's scheme, to the webhook receivers given to `deliver_to` (a background
  thread, retried as Stripe retries); `hold_events` holds them back until `release_events`, and
  `redeliver` sends one again (a late or a duplicated webhook).

It starts with the design memo's plans and credit packs (`MEMO_CATALOGUE`), their gateway terms
in metadata (`tp_*`, read by `payments.catalogue`). Events carry their objects in the API version
of the receiver: the current one, or the 2024 shape (`event_version = LEGACY`) that an endpoint
not yet moved still receives. Tests may also seed any object with `put` (what a re-fetch finds).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import html
import itertools
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qsl

from devpeers.stripe_billing import Subscriptions, legacy_shape
from devpeers.stripe_objects import StripeError, flag, form_list
from devpeers.stripe_payments import TEST_CARDS, CardPayments

CURRENT = "2026-05-27.dahlia"  # the gateway's STRIPE_API_VERSION
LEGACY = "2024-06-20"
# The design memo's catalogue: (product id, name, product metadata, price id, cents, price
# metadata). Plans are monthly prices; packs are one-time prices.
MEMO_CATALOGUE: tuple[tuple[str, str, dict[str, str], str, int, dict[str, str]], ...] = (
    (
        "prod_explorer",
        "Explorer",
        {"tp_plan": "explorer", "tp_hd_access": "false", "tp_key_tier": "free", "tp_order": "10"},
        "price_plan_explorer",
        499,
        {"tp_monthly_credits": "50"},
    ),
    (
        "prod_historian",
        "Historian",
        {"tp_plan": "historian", "tp_hd_access": "true", "tp_key_tier": "free", "tp_order": "20"},
        "price_plan_historian",
        1499,
        {"tp_monthly_credits": "200"},
    ),
    (
        "prod_api_pro",
        "API Pro",
        {"tp_plan": "api_pro", "tp_hd_access": "true", "tp_key_tier": "pro", "tp_order": "30"},
        "price_plan_api_pro",
        4999,
        {"tp_monthly_credits": "1000"},
    ),
    (
        "prod_100_credits",
        "100 credits",
        {"tp_pack": "100_credits", "tp_order": "10"},
        "price_pack_100",
        499,
        {"tp_credits": "100"},
    ),
    (
        "prod_500_credits",
        "500 credits",
        {"tp_pack": "500_credits", "tp_order": "20"},
        "price_pack_500",
        1999,
        {"tp_credits": "500"},
    ),
    (
        "prod_1000_credits",
        "1 000 credits",
        {"tp_pack": "1000_credits", "tp_order": "30"},
        "price_pack_1000",
        3499,
        {"tp_credits": "1000"},
    ),
)

# Stripe's URL collection → object type, for the GETs dj-stripe makes.
COLLECTIONS = {
    "customers": "customer",
    "subscriptions": "subscription",
    "invoices": "invoice",
    "invoice_payments": "invoice_payment",
    "charges": "charge",
    "payment_intents": "payment_intent",
    "prices": "price",
    "products": "product",
    "plans": "plan",
    "disputes": "dispute",
    "refunds": "refund",
    "payment_methods": "payment_method",
    "balance_transactions": "balance_transaction",
    "checkout/sessions": "checkout.session",
    "events": "event",
    "webhook_endpoints": "webhook_endpoint",
}
LISTABLE = frozenset({"product", "price", "invoice_payment", "webhook_endpoint", "event"})
DELIVERY_ATTEMPTS = 5


def _unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`metadata[plan]=x&line_items[0][price]=p` → nested dicts (lists stay index-keyed dicts)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


def signature(body: bytes, secret: str, timestamp: int) -> str:
    """`Stripe-Signature`: t=<unix>,v1=HMAC-SHA256(secret, "<t>.<body>")."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class StripePeer(CardPayments, Subscriptions):
    def __init__(self, *, catalogue: bool = True, public_url: str = "") -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.versions: list[str] = []  # the Stripe-Version header of every request
        self.cancelled: list[str] = []  # subscription ids cancelled through the API
        self.events: list[dict[str, Any]] = []  # every event, oldest first (current shape)
        self.event_version = CURRENT  # the shape receivers get (LEGACY: a 2024 endpoint)
        self.down = False  # answer every call with a 500 api_error (a Stripe outage)
        self.decline = ""  # a decline code: card payments fail with it (e.g. "card_declined")
        self.clock: int | None = None  # a frozen time (a test clock); None follows the wall
        # Where `make run` serves the pay page; empty: Checkout URLs look like Stripe's.
        self.public_url = public_url.rstrip("/")
        self._ids = itertools.count(1)
        self._receivers: list[tuple[str, str]] = []
        # What a Checkout Session was created with (its line items are not part of the object).
        self._checkout: dict[str, dict[str, Any]] = {}
        # What paid each invoice: (payment intent, charge); the 2024 shape names them.
        self._paid_by: dict[str, tuple[str, str]] = {}
        self._outbox: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        self._sender: threading.Thread | None = None
        # While set, events wait here instead of going out (a webhook Stripe is slow to send).
        self.hold_events = False
        self._held: list[tuple[str, str, bytes]] = []
        self.card_payments_start()
        self.account = {
            "id": "acct_test_platform",
            "object": "account",
            "type": "standard",
            "country": "US",
            "default_currency": "usd",
            "email": "billing@example.com",
            "business_profile": {"name": "Timepoint"},
            "settings": {"dashboard": {"display_name": "Timepoint"}},
            "charges_enabled": True,
            "payouts_enabled": True,
            "details_submitted": True,
            "metadata": {},
            "created": 1_700_000_000,
        }
        if catalogue:
            self.catalogue_seed()

    # --- Storage, time, events

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_test{next(self._ids):06d}"

    def now(self) -> int:
        return self.clock if self.clock is not None else int(time.time())

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.objects[obj["id"]] = obj
        return obj

    def get(self, object_id: str, kind: str) -> dict[str, Any]:
        found = self.objects.get(object_id)
        if found is None or found.get("object") != kind:
            raise StripeError(
                404, f"No such {kind}: '{object_id}'", code="resource_missing", param="id"
            )
        return found

    def calls(self, method: str, path_prefix: str) -> list[dict[str, Any]]:
        return [body for m, p, body in self.requests if m == method and p.startswith(path_prefix)]

    def emit(self, kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> None:
        """Record an event about `obj` (a snapshot, as Stripe's events are) and send it out."""
        event: dict[str, Any] = {
            "id": self.new_id("evt"),
            "object": "event",
            "api_version": CURRENT,
            "created": self.now(),
            "livemode": False,
            "pending_webhooks": len(self._receivers),
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
            "data": {"object": copy.deepcopy(obj), "previous_attributes": previous or {}},
        }
        with self.lock:
            self.events.append(event)
            self.objects[event["id"]] = event
            receivers = list(self._receivers)
        for url, secret in receivers:
            self._send(url, secret, self.event_body(event))

    def _send(self, url: str, secret: str, body: bytes) -> None:
        with self.lock:
            if self.hold_events:
                self._held.append((url, secret, body))
                return
        self._outbox.put((url, secret, body))

    def release_events(self) -> None:
        """Send the events held back while `hold_events` was set, in order, and stop holding."""
        with self.lock:
            self.hold_events = False
            held, self._held = self._held, []
        for item in held:
            self._outbox.put(item)

    def redeliver(self, event_id: str) -> None:
        """Send an event again to every receiver, as Stripe sometimes does (a duplicate)."""
        with self.lock:
            event = self.get(event_id, "event")
            receivers = list(self._receivers)
        for url, secret in receivers:
            self._send(url, secret, self.event_body(event))

    def event_body(self, event: dict[str, Any]) -> bytes:
        """The event as a receiver on `event_version` gets it."""
        if self.event_version == CURRENT:
            return json.dumps(event).encode()
        shaped = copy.deepcopy(event)
        shaped["api_version"] = self.event_version
        shaped["data"]["object"] = self.legacy_shape(shaped["data"]["object"])
        return json.dumps(shaped).encode()

    def legacy_shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        return legacy_shape(obj, self._paid_by)

    def events_of(self, *kinds: str, since: int = 0) -> list[dict[str, Any]]:
        """Events of these types (all when none given), from index `since` of `events`."""
        with self.lock:
            found = self.events[since:]
        return [event for event in found if not kinds or event["type"] in kinds]

    def deliver_to(self, url: str, secret: str) -> None:
        """Send every later event to `url`, signed with `secret` (a webhook endpoint)."""
        with self.lock:
            self._receivers.append((url, secret))
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send_forever, name="stripe-webhooks", daemon=True
                )
                self._sender.start()

    def _send_forever(self) -> None:
        while True:
            url, secret, body = self._outbox.get()
            for attempt in range(DELIVERY_ATTEMPTS):
                request = urllib.request.Request(
                    url,
                    data=body,
                    method="POST",
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": signature(body, secret, int(time.time())),
                    },
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        if 200 <= answer.status < 300:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(min(30.0, 0.5 * 2**attempt))

    # --- The catalogue

    def catalogue_seed(self) -> None:
        """The memo's plans and packs, as a billing person made them in the Dashboard."""
        for product_id, name, product_meta, price_id, cents, price_meta in MEMO_CATALOGUE:
            self.product_create({"id": product_id, "name": name, "metadata": product_meta})
            self.price_create(
                {
                    "id": price_id,
                    "product": product_id,
                    "unit_amount": str(cents),
                    "currency": "usd",
                    "metadata": price_meta,
                    **({"recurring": {"interval": "month"}} if "tp_plan" in product_meta else {}),
                },
                created=1_700_000_000,
            )

    def product_create(self, params: dict[str, Any]) -> dict[str, Any]:
        product_id = str(params.get("id") or self.new_id("prod"))
        if product_id in self.objects:
            raise StripeError(400, f"Product already exists: '{product_id}'", param="id")
        product = self.put(
            {
                "id": product_id,
                "object": "product",
                "active": flag(params.get("active", "true")),
                "name": str(params.get("name") or ""),
                "description": params.get("description"),
                "default_price": None,
                "images": [],
                "marketing_features": [],
                "livemode": False,
                "metadata": {k: v for k, v in (params.get("metadata") or {}).items() if v != ""},
                "package_dimensions": None,
                "shippable": None,
                "statement_descriptor": None,
                "tax_code": None,
                "type": "service",
                "unit_label": None,
                "url": None,
                "created": self.now(),
                "updated": self.now(),
            }
        )
        self.emit("product.created", product)
        return product

    def _update(self, obj: dict[str, Any], params: dict[str, Any], fields: set[str]) -> None:
        """Apply an update: `fields` are replaced, metadata merged; the event names what was."""
        previous: dict[str, Any] = {}
        for name in fields & set(params):
            value: Any = params[name]
            if name == "active":
                value = flag(value)
            if obj.get(name) != value:
                previous[name] = obj.get(name)
                obj[name] = value
        if "metadata" in params:
            metadata = dict(obj.get("metadata") or {})
            for key, value in (params["metadata"] or {}).items():
                if value == "":
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
            if metadata != obj.get("metadata"):
                previous["metadata"] = obj.get("metadata")
                obj["metadata"] = metadata
        if "updated" in obj:
            obj["updated"] = self.now()
        self.emit(f"{obj['object']}.updated", obj, previous)

    def price_create(self, params: dict[str, Any], created: int | None = None) -> dict[str, Any]:
        product_id = str(params.get("product") or "")
        self.get(product_id, "product")
        if "unit_amount" not in params:
            raise StripeError(400, "Missing required param: unit_amount.", param="unit_amount")
        recurring = params.get("recurring")
        price_id = str(params.get("id") or self.new_id("price"))
        price = self.put(
            {
                "id": price_id,
                "object": "price",
                "active": flag(params.get("active", "true")),
                "billing_scheme": "per_unit",
                "created": created or self.now(),
                "currency": str(params.get("currency") or "usd"),
                "custom_unit_amount": None,
                "livemode": False,
                "lookup_key": params.get("lookup_key"),
                "metadata": {k: v for k, v in (params.get("metadata") or {}).items() if v != ""},
                "nickname": params.get("nickname"),
                "product": product_id,
                "recurring": (
                    {
                        "interval": str(recurring.get("interval") or "month"),
                        "interval_count": int(recurring.get("interval_count") or 1),
                        "meter": None,
                        "trial_period_days": None,
                        "usage_type": str(recurring.get("usage_type") or "licensed"),
                    }
                    if recurring
                    else None
                ),
                "tax_behavior": "unspecified",
                "tiers_mode": None,
                "transform_quantity": None,
                "type": "recurring" if recurring else "one_time",
                "unit_amount": int(params["unit_amount"]),
                "unit_amount_decimal": str(int(params["unit_amount"])),
            }
        )
        self.emit("price.created", price)
        return price

    # --- Checkout: what the customer does on Stripe's page

    def checkout_complete(self, session_id: str, card: str = "pm_card_visa") -> dict[str, Any]:
        """The customer pays with `card` (a test payment method): a pack's payment, or a plan's
        subscription and its first invoice, with the events Stripe sends for them (the
        session's completion last). A declined card raises the card error and leaves the
        session open. A pack bought with `payment_intent_data[setup_future_usage]` saves the card
        on the customer, as a subscription always does."""
        with self.lock:
            session = self.get(session_id, "checkout.session")
            if session["status"] != "open":
                raise StripeError(400, "This Checkout Session is no longer open.")
            self._refuse_if_declined()
            created_with = self._checkout[session_id]
            line = form_list(created_with.get("line_items"))[0]
            price = self.get(str(line["price"]), "price")
            quantity = int(line.get("quantity") or 1)
            amount = int(price["unit_amount"]) * quantity
            now = self.now()
            if session["mode"] == "subscription":
                saved = self.payment_method_attach(card, str(session["customer"]))
                subscription = self.subscription_create(
                    customer=str(session["customer"]),
                    price=price,
                    quantity=quantity,
                    metadata=dict(
                        (created_with.get("subscription_data") or {}).get("metadata") or {}
                    ),
                )
                invoice = self.invoice_create(
                    subscription, "subscription_create", [self._line(subscription, price, amount)]
                )
                subscription["default_payment_method"] = saved["id"]
                session.update(subscription=subscription["id"], invoice=invoice["id"])
            else:
                intent_data = created_with.get("payment_intent_data") or {}
                intent = self.payment_intent_open(
                    customer=str(session["customer"]),
                    amount=amount,
                    currency=str(price["currency"]),
                    method=self.payment_method(card),
                    metadata=dict(intent_data.get("metadata") or {}),
                    setup_future_usage=intent_data.get("setup_future_usage"),
                )
                self.payment_intent_confirm(intent, customer_present="page")
                session["payment_intent"] = intent["id"]
            session.update(
                status="complete",
                payment_status="paid",
                amount_total=amount,
                amount_subtotal=amount,
                currency=price["currency"],
                completed_at=now,
            )
            self.emit("checkout.session.completed", session)
            return session

    # --- HTTP

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method = scope["method"]
        path = scope["path"]
        query = body.decode() or scope.get("query_string", b"").decode()
        params = _unflatten(parse_qsl(query, keep_blank_values=True))
        headers = dict(scope.get("headers") or [])
        with self.lock:
            self.requests.append((method, path, params))
            self.versions.append(headers.get(b"stripe-version", b"").decode())
        content_type = b"application/json"
        extra: list[tuple[bytes, bytes]] = []
        if path.startswith("/checkout/"):
            status, page, location = self.pay_page(
                method, path.removeprefix("/checkout/"), str(params.get("card") or "")
            )
            raw = page.encode()
            content_type = b"text/html; charset=utf-8"
            if location:
                extra.append((b"location", location.encode()))
        else:
            idempotency_key = headers.get(b"idempotency-key", b"").decode()
            status, payload = self.handle(method, path, params, idempotency_key)
            raw = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"request-id", b"req_test"),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    def pay_page(self, method: str, session_id: str, card: str = "") -> tuple[int, str, str]:
        """`make run`'s stand-in for Stripe's hosted Checkout page: GET shows what is bought and
        a choice of Stripe's test cards, POST pays with the chosen one and sends the browser to
        the session's success URL (a declined card shows the error instead)."""
        session = self.objects.get(session_id)
        if session is None or session.get("object") != "checkout.session":
            return 404, "<h1>No such Checkout Session</h1>", ""
        if method == "POST":
            try:
                self.checkout_complete(session_id, card if card in TEST_CARDS else "pm_card_visa")
            except StripeError as exc:
                return exc.status, f"<h1>{html.escape(str(exc))}</h1>", ""
            return 303, "", str(session.get("success_url") or "/")
        line = form_list(self._checkout[session_id].get("line_items"))[0]
        price = self.objects.get(str(line["price"])) or {}
        product = self.objects.get(str(price.get("product"))) or {}
        cents = int(price.get("unit_amount") or 0)
        every = " / month" if price.get("recurring") else ""
        page = (
            '<!doctype html><title>Local Stripe Checkout</title><link rel="icon" href="data:,">'
            f"<h1>{html.escape(str(product.get('name') or price.get('id')))}</h1>"
            f"<p>{cents // 100}.{cents % 100:02d} {html.escape(str(price.get('currency')))}"
            f"{every}</p><p>Local Stripe-compatible server: no card is charged.</p>"
            '<form method="post"><label>Test card <select name="card">'
            + "".join(
                f'<option value="{token}">{token} (…{card.last4})</option>'
                for token, card in TEST_CARDS.items()
            )
            + '</select></label> <button type="submit">Pay</button></form>'
        )
        return 200, page, ""

    def listed(self, kind: str, rest: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """A list's items: an invoice's `/lines` as stored on it; products, prices and events
        newest first (filtered by `active`, `product`, `type`); InvoicePayments filtered by
        `invoice` and `payment[...]` as Stripe filters them; a customer's payment methods
        (`/v1/payment_methods?customer=`, `/v1/customers/{id}/payment_methods`) newest first;
        nothing for any other list."""
        with self.lock:
            if kind == "invoice" and rest.endswith("/lines"):
                invoice = self.objects.get(rest.split("/", 1)[0]) or {}
                return list((invoice.get("lines") or {}).get("data") or [])
            if kind == "customer" and rest.endswith("/payment_methods"):
                return self.payment_methods_of(self.get(rest.split("/", 1)[0], "customer")["id"])
            if kind == "payment_method" and not rest:
                customer = str(params.get("customer") or "")
                return self.payment_methods_of(customer) if customer else []
            if kind not in LISTABLE or rest:
                return []
            rows = [obj for obj in self.objects.values() if obj.get("object") == kind]
        if kind == "webhook_endpoint":  # the secret is shown only when it is created
            return [{**row, "secret": None} for row in rows]
        if kind in ("product", "price", "event"):
            rows.sort(key=lambda row: (row["created"], row["id"]), reverse=True)
            if "active" in params:
                rows = [row for row in rows if row["active"] == flag(params["active"])]
            if "product" in params:
                rows = [row for row in rows if row["product"] == params["product"]]
            if "type" in params:
                rows = [row for row in rows if row["type"] == params["type"]]
            return rows
        wanted = params.get("payment") or {}
        return [
            row
            for row in rows
            if params.get("invoice", row["invoice"]) == row["invoice"]
            and all(row["payment"].get(name) == value for name, value in wanted.items())
        ]

    def handle(
        self, method: str, path: str, params: dict[str, Any], idempotency_key: str = ""
    ) -> tuple[int, Any]:
        if self.down:
            return 500, {"error": {"type": "api_error", "message": "Stripe is down (test)."}}
        if method != "POST" or not idempotency_key:
            return self._answer(method, path, params)
        with self.lock:
            first = self.idempotent.get(idempotency_key)
            if first is not None:
                first_path, first_params, status, payload = first
                if (first_path, first_params) != (path, params):
                    return 400, {
                        "error": {
                            "type": "idempotency_error",
                            "message": "Keys for idempotent requests can only be used with the "
                            "same parameters they were first used with. Try using a key other "
                            f"than '{idempotency_key}' if you meant to execute a different "
                            "request.",
                        }
                    }
                self.idempotent_replays.append(idempotency_key)
                return status, copy.deepcopy(payload)
            status, payload = self._answer(method, path, params)
            # As Stripe: a request that ran is answered the same way again (a card error too);
            # one refused before it ran (invalid parameters, a missing object) is not kept.
            if status < 400 or status == 402:
                self.idempotent[idempotency_key] = (path, params, status, copy.deepcopy(payload))
            return status, payload

    def _answer(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        try:
            return 200, self.route(method, path, params)
        except StripeError as exc:
            return exc.status, exc.body

    def api(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        """Call the API in-process, as the Dashboard or the SDK would (a test's billing person).
        Raises StripeError on an error answer."""
        result: dict[str, Any] = self.route(method, path, params)
        return result

    def route(self, method: str, path: str, params: dict[str, Any]) -> Any:
        if path == "/v1/account":
            return self.account
        parts = path.strip("/").split("/")
        if method == "POST":
            with self.lock:
                return self._post(path, parts, params)
        if method == "DELETE" and path.startswith("/v1/subscriptions/"):
            return self.subscription_cancel(parts[2])
        if method == "GET":
            for collection in COLLECTIONS:
                prefix = f"/v1/{collection}"
                if path == prefix or path.startswith(prefix + "/"):
                    rest = path[len(prefix) :].strip("/")
                    if not rest or "/" in rest:  # a list, or a sub-list such as /lines
                        return self._page(
                            self.listed(COLLECTIONS[collection], rest, params), path, params
                        )
                    with self.lock:
                        return self.get(rest, COLLECTIONS[collection])
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def _page(
        self, rows: list[dict[str, Any]], path: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        after = params.get("starting_after")
        if after:
            ids = [row["id"] for row in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        limit = max(1, min(100, int(params.get("limit") or 10)))
        return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit, "url": path}

    def _post(self, path: str, parts: list[str], params: dict[str, Any]) -> Any:
        if path == "/v1/products":
            return self.product_create(params)
        if path == "/v1/prices":
            return self.price_create(params)
        if len(parts) == 3 and parts[1] == "products":
            product = self.get(parts[2], "product")
            self._update(product, params, {"name", "active", "description"})
            return product
        if len(parts) == 3 and parts[1] == "prices":
            price = self.get(parts[2], "price")
            if "unit_amount" in params or "currency" in params:
                raise StripeError(
                    400, "A price's amount cannot change: create a new price.", param="unit_amount"
                )
            self._update(price, params, {"active", "nickname", "lookup_key"})
            return price
        if len(parts) == 3 and parts[1] == "subscriptions":
            return self.subscription_update(parts[2], params)
        if len(parts) == 3 and parts[1] == "customers":
            return self.customer_update(parts[2], params)
        if path == "/v1/payment_intents":
            return self.payment_intent_create(params)
        if len(parts) == 4 and parts[1] == "payment_methods" and parts[3] == "attach":
            return self.payment_method_attach(parts[2], str(params.get("customer") or ""))
        if len(parts) == 4 and parts[1] == "payment_methods" and parts[3] == "detach":
            return self.payment_method_detach(parts[2])
        if path == "/v1/customers":
            customer = self.put(
                {
                    "id": self.new_id("cus"),
                    "object": "customer",
                    "email": params.get("email"),
                    "name": params.get("name"),
                    "metadata": params.get("metadata", {}),
                    "livemode": False,
                    "created": self.now(),
                    "balance": 0,
                    "currency": "usd",
                    "delinquent": False,
                    "invoice_settings": {
                        "custom_fields": None,
                        "default_payment_method": None,
                        "footer": None,
                        "rendering_options": None,
                    },
                    "preferred_locales": [],
                }
            )
            return customer
        if path == "/v1/checkout/sessions":
            session_id = self.new_id("cs")
            self._checkout[session_id] = params
            url = (
                f"{self.public_url}/checkout/{session_id}"
                if self.public_url
                else f"https://checkout.stripe.com/c/pay/{session_id}"
            )
            return self.put(
                {
                    "id": session_id,
                    "object": "checkout.session",
                    "url": url,
                    "mode": params.get("mode"),
                    "customer": params.get("customer"),
                    "client_reference_id": params.get("client_reference_id"),
                    "metadata": params.get("metadata", {}),
                    "success_url": params.get("success_url"),
                    "cancel_url": params.get("cancel_url"),
                    "subscription": None,
                    "invoice": None,
                    "payment_intent": None,
                    "status": "open",
                    "payment_status": "unpaid",
                    "livemode": False,
                    "created": self.now(),
                }
            )
        if path == "/v1/webhook_endpoints":
            return self.put(
                {
                    "id": self.new_id("we"),
                    "object": "webhook_endpoint",
                    "url": params.get("url"),
                    "api_version": params.get("api_version"),
                    "enabled_events": form_list(params.get("enabled_events")),
                    "description": params.get("description"),
                    "secret": f"whsec_{self.new_id('secret')}",
                    "status": "enabled",
                    "livemode": False,
                    "metadata": {},
                    "created": self.now(),
                }
            )
        if path == "/v1/billing_portal/sessions":
            portal_id = self.new_id("bps")
            return {
                "id": portal_id,
                "object": "billing_portal.session",
                "customer": params.get("customer"),
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.com/p/session/{portal_id}",
                "livemode": False,
                "created": self.now(),
            }
        raise StripeError(404, f"Unrecognized request URL (POST: {path}).")
