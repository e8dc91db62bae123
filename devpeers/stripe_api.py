"""A Stripe-compatible server for tests: a tiny ASGI app served on loopback.

It speaks just enough of Stripe's REST API for the gateway and dj-stripe: form-encoded POSTs that
create customers, checkout and billing-portal sessions, and GETs that retrieve stored objects by id
(404 `resource_missing` in Stripe's error shape otherwise). Tests seed it with the objects that a
webhook names, exactly as Stripe would return them when dj-stripe re-fetches them.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

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


class StripePeer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.versions: list[str] = []  # the Stripe-Version header of every request
        self.cancelled: list[str] = []  # subscription ids cancelled through the API
        self.down = False  # answer every call with a 500 api_error (a Stripe outage)
        self._ids = itertools.count(1)
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

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_test{next(self._ids):06d}"

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.objects[obj["id"]] = obj
        return obj

    def calls(self, method: str, path_prefix: str) -> list[dict[str, Any]]:
        return [body for m, p, body in self.requests if m == method and p.startswith(path_prefix)]

    # --- ASGI

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
        params = _unflatten(parse_qsl(body.decode() or scope.get("query_string", b"").decode()))
        headers = dict(scope.get("headers") or [])
        with self.lock:
            self.requests.append((method, path, params))
            self.versions.append(headers.get(b"stripe-version", b"").decode())
        status, payload = self.handle(method, path, params)
        raw = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"request-id", b"req_test"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    def listed(self, kind: str, rest: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """A list's items: an invoice's `/lines` as stored on it; InvoicePayments filtered by
        `invoice` and `payment[...]` as Stripe filters them; nothing for any other list."""
        with self.lock:
            if kind == "invoice" and rest.endswith("/lines"):
                invoice = self.objects.get(rest.split("/", 1)[0]) or {}
                return list((invoice.get("lines") or {}).get("data") or [])
            if kind not in ("invoice_payment", "webhook_endpoint") or rest:
                return []
            rows = [obj for obj in self.objects.values() if obj.get("object") == kind]
        if kind == "webhook_endpoint":  # the secret is shown only when it is created
            return [{**row, "secret": None} for row in rows]
        wanted = params.get("payment") or {}
        return [
            row
            for row in rows
            if params.get("invoice", row["invoice"]) == row["invoice"]
            and all(row["payment"].get(name) == value for name, value in wanted.items())
        ]

    def handle(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        if self.down:
            return 500, {"error": {"type": "api_error", "message": "Stripe is down (test)."}}
        if path == "/v1/account":
            return 200, self.account
        if method == "POST" and path == "/v1/customers":
            return 200, self.put(
                {
                    "id": self.new_id("cus"),
                    "object": "customer",
                    "email": params.get("email"),
                    "name": params.get("name"),
                    "metadata": params.get("metadata", {}),
                    "livemode": False,
                    "created": int(time.time()),
                    "balance": 0,
                    "currency": "usd",
                    "delinquent": False,
                    "invoice_settings": {},
                    "preferred_locales": [],
                }
            )
        if method == "POST" and path == "/v1/checkout/sessions":
            session_id = self.new_id("cs")
            return 200, self.put(
                {
                    "id": session_id,
                    "object": "checkout.session",
                    "url": f"https://checkout.stripe.com/c/pay/{session_id}",
                    "mode": params.get("mode"),
                    "customer": params.get("customer"),
                    "client_reference_id": params.get("client_reference_id"),
                    "metadata": params.get("metadata", {}),
                    "status": "open",
                    "payment_status": "unpaid",
                    "livemode": False,
                    "created": int(time.time()),
                }
            )
        if method == "POST" and path == "/v1/webhook_endpoints":
            return 200, self.put(
                {
                    "id": self.new_id("we"),
                    "object": "webhook_endpoint",
                    "url": params.get("url"),
                    "api_version": params.get("api_version"),
                    "enabled_events": list((params.get("enabled_events") or {}).values()),
                    "description": params.get("description"),
                    "secret": f"whsec_{self.new_id('secret')}",
                    "status": "enabled",
                    "livemode": False,
                    "metadata": {},
                    "created": int(time.time()),
                }
            )
        if method == "POST" and path == "/v1/billing_portal/sessions":
            portal_id = self.new_id("bps")
            return 200, {
                "id": portal_id,
                "object": "billing_portal.session",
                "customer": params.get("customer"),
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.com/p/session/{portal_id}",
                "livemode": False,
                "created": int(time.time()),
            }
        if method == "DELETE" and path.startswith("/v1/subscriptions/"):
            with self.lock:
                found = self.objects.get(path.rsplit("/", 1)[1])
                if found is not None:
                    found.update({"status": "canceled", "canceled_at": int(time.time())})
                    self.cancelled.append(found["id"])
            if found is not None:
                return 200, found
        if method == "GET":
            for collection in COLLECTIONS:
                prefix = f"/v1/{collection}"
                if path == prefix or path.startswith(prefix + "/"):
                    rest = path[len(prefix) :].strip("/")
                    if not rest or "/" in rest:  # a list, or a sub-list such as /lines
                        return 200, {
                            "object": "list",
                            "data": self.listed(COLLECTIONS[collection], rest, params),
                            "has_more": False,
                            "url": path,
                        }
                    with self.lock:
                        found = self.objects.get(rest)
                    if found is not None:
                        return 200, found
                    return 404, {
                        "error": {
                            "type": "invalid_request_error",
                            "code": "resource_missing",
                            "param": "id",
                            "message": f"No such {COLLECTIONS[collection]}: '{rest}'",
                        }
                    }
        return 404, {
            "error": {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({method}: {path}).",
            }
        }
