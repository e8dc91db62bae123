"""The internal API for sibling services, through the production server (gunicorn +
GatewayUvicornWorker, 2 workers), as the MCP server and future TIMEPOINT services call it:

- every internal route refuses public credentials (Auth0 JWT, gateway session, developer key) and
  every public route refuses internal ones, with nothing reaching an upstream;
- `GET /internal/billing/status`, read by a client written as timepoint-mcp's billing client is
  (httpx, `raise_for_status`, `subscription_tier` and `status`), follows a subscriber through
  checkout, a cancellation, a new subscription and a failed renewal, from Stripe webhooks signed
  with Stripe's scheme and a Stripe-compatible server on loopback;
- `POST /internal/keys/verify` answers a revoked key invalid within 1 s on both workers (the
  connection of each worker is identified from /proc), and charges the key's own windows;
- `GET /internal/credits/check` answers from Flash (the contract peer);
- the usage records of internal calls carry the service's name.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings

from accounts.tests.auth0_server import AUDIENCE, FakeAuth0
from payments.tests import factories as f
from tests.reliability.conftest import (
    ROOT,
    exchange,
    free_port,
    one_connection_per_worker,
    stop_process,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MCP_SECRET = "mcp-production-test-secret-0123456789abcdef"
WAIT_SECONDS = 30.0  # bounded waits for webhook processing on a loaded machine


# --- A client written as timepoint-mcp's (app/clients/billing.py, app/auth/tier.py, gateway.py)


class McpBillingClient:
    """What the MCP server does: GET {BILLING_URL}/internal/billing/status with X-Service-Key and
    X-User-Id, `raise_for_status()`, then the JSON."""

    def __init__(self, base_url: str, service_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.service_key = service_key
        self.client = httpx.Client(timeout=20.0, trust_env=False)

    def get_status(self, user_id: str) -> dict[str, Any]:
        response = self.client.get(
            f"{self.base_url}/internal/billing/status",
            headers={"X-Service-Key": self.service_key, "X-User-Id": user_id},
        )
        response.raise_for_status()
        return dict(response.json())

    def resolve_tier(self, user_id: str) -> str:
        """Its TierResolver: the tier only when `status == "active"` and the tier is one it
        knows; free on anything else, errors included."""
        try:
            status = self.get_status(user_id)
        except Exception:
            return "free"
        tier = (status.get("subscription_tier") or "free").lower()
        if (status.get("status") or "").lower() == "active" and tier in {
            "free",
            "explorer",
            "creator",
            "studio",
        }:
            return tier
        return "free"

    def check_balance(self, user_id: str, cost: int) -> dict[str, Any]:
        """Its gateway client: GET /internal/credits/check?user_id=&cost=."""
        response = self.client.get(
            f"{self.base_url}/internal/credits/check",
            params={"user_id": user_id, "cost": cost},
            headers={"X-Service-Key": self.service_key},
        )
        response.raise_for_status()
        return dict(response.json())


# --- Fixtures


@pytest.fixture
def auth0(settings: Any) -> Iterator[FakeAuth0]:
    fake = FakeAuth0()
    fake.add_key()
    settings.AUTH0_ISSUER = fake.issuer
    settings.AUTH0_JWKS_URL = fake.jwks_url
    settings.AUTH0_AUDIENCE = AUDIENCE
    yield fake
    fake.stop()


STRIPE_TEST_KEY = "sk_test_51GatewayTestKey0000000000000000"  # a key dj-stripe accepts


@pytest.fixture
def stripe_catalogue(catalogue: Any, settings: Any) -> Any:
    """The Stripe-compatible server, its memo catalogue synced into the test's database."""
    settings.STRIPE_SECRET_KEY = settings.STRIPE_TEST_SECRET_KEY = STRIPE_TEST_KEY
    return catalogue


@pytest.fixture
def start_server(
    production_gateway: Any, flash_peer: Any, clockchain_peer: Any, settings: Any
) -> Callable[..., Any]:
    def start(extra_ports: tuple[int, ...] = (), **extra: str) -> Any:
        env = {
            "INTERNAL_SERVICE_KEYS": f"mcp:{MCP_SECRET}",
            "AUTH_FAILURE_LIMIT_PER_MINUTE": "10000",
            "METERING_FLUSH_INTERVAL_SECONDS": "1",
            "AUTH0_ISSUER": settings.AUTH0_ISSUER,
            "AUTH0_JWKS_URL": settings.AUTH0_JWKS_URL,
            "AUTH0_AUDIENCE": settings.AUTH0_AUDIENCE,
            **extra,
        }
        return production_gateway(env, extra_ports=extra_ports)

    return start


def _rows(server: Any, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the server's database (SQLite: its own copy; PostgreSQL: the shared one)."""
    if server.database_url.startswith("sqlite:///"):
        with sqlite3.connect(server.database_url.removeprefix("sqlite:///")) as db:
            return list(db.execute(sql).fetchall())
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and body["detail"], body


# --- Separation of the two kinds of credential


INTERNAL_ROUTES = [
    ("GET", "/internal/billing/status", None),
    ("POST", "/internal/keys/verify", {"key": "tp_live_x"}),
    ("GET", "/internal/credits/check?user_id=1&cost=1", None),
    ("GET", "/internal/schema", None),
]
PUBLIC_ROUTES = [
    ("GET", "/api/v1/credits/balance", None),  # relay (async) → Flash
    ("GET", "/api/v1/browse", None),  # relay (async) → Clockchain
    ("GET", "/api/v1/keys", None),  # DRF
    ("GET", "/api/v1/auth/me", None),
    ("POST", "/api/v1/billing/checkout", {"plan": "explorer"}),
    ("GET", "/api/v1/billing/plans", None),  # needs no credential: still refused
]


def test_public_and_internal_credentials_are_refused_on_each_others_routes(
    start_server: Any,
    auth0: FakeAuth0,
    user: Any,
    make_key: Any,
    session_token: str,
    flash_peer: Any,
    clockchain_peer: Any,
) -> None:
    from internal.services import service_credential_create

    _, raw_key = make_key(user)
    _, admin_secret = service_credential_create(name="clockchain")
    jwt = auth0.token(user.auth0_sub)
    server = start_server()
    public_credentials = {
        "jwt": {"Authorization": f"Bearer {jwt}"},
        "session": {"Authorization": f"Bearer {session_token}"},
        "key": {"Authorization": f"Bearer {raw_key}"},
        "x-api-key": {"X-API-Key": raw_key},
    }
    internal_credentials = {
        "env secret": {"X-Service-Key": MCP_SECRET},
        "admin secret": {"X-Service-Key": admin_secret},
        "admin secret as bearer": {"Authorization": f"Bearer {admin_secret}"},
        "admin secret as x-api-key": {"X-API-Key": admin_secret},
        "env secret beside a session": {
            "X-Service-Key": MCP_SECRET,
            "Authorization": f"Bearer {session_token}",
        },
    }
    with httpx.Client(base_url=server.url, timeout=20, trust_env=False) as client:
        # Each credential works on its own side (so the refusals below are about the side).
        for headers in public_credentials.values():
            assert client.get("/api/v1/keys", headers=headers).status_code == 200
        for secret in (MCP_SECRET, admin_secret):
            ok = client.get(
                "/internal/billing/status",
                headers={"X-Service-Key": secret, "X-User-Id": str(user.pk)},
            )
            assert ok.status_code == 200 and ok.json()["status"] == "none"
        flash_before, clockchain_before = len(flash_peer.requests), len(clockchain_peer.requests)

        for method, path, body in INTERNAL_ROUTES:
            for headers in public_credentials.values():
                for service in ({}, {"X-Service-Key": MCP_SECRET}):
                    response = client.request(
                        method,
                        path,
                        json=body,
                        headers={**headers, **service, "X-User-Id": str(user.pk)},
                    )
                    _error(response, 401, "public_credential_refused")
            no_key = client.request(method, path, json=body, headers={"X-User-Id": str(user.pk)})
            _error(no_key, 401, "service_key_required")
            wrong = client.request(
                method, path, json=body, headers={"X-Service-Key": "g" * 40, "X-User-Id": "1"}
            )
            _error(wrong, 401, "invalid_service_key")

        for method, path, body in PUBLIC_ROUTES:
            for headers in internal_credentials.values():
                response = client.request(
                    method, path, json=body, headers={**headers, "X-User-Id": str(user.pk)}
                )
                _error(response, 401, "internal_credential_refused")
            # An environment secret as a bearer token is only an invalid JWT there.
            as_bearer = client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {MCP_SECRET}"}
            )
            if path != "/api/v1/billing/plans":
                assert as_bearer.status_code == 401, path
        assert len(flash_peer.requests) == flash_before
        assert len(clockchain_peer.requests) == clockchain_before
    assert server.stop() == 0
    services = _rows(
        server,
        "SELECT service, endpoint, status FROM metering_usagerecord WHERE service <> '' "
        "ORDER BY id",
    )
    assert sorted(services) == [
        ("clockchain", "/internal/billing/status", 200),
        ("mcp", "/internal/billing/status", 200),
    ]


def test_internal_api_on_a_private_listener_only(
    start_server: Any, user: Any, session_token: str
) -> None:
    private_port = free_port()
    server = start_server(INTERNAL_API_PORT=str(private_port), extra_ports=(private_port,))
    status_headers = {"X-Service-Key": MCP_SECRET, "X-User-Id": str(user.pk)}
    public = f"http://127.0.0.1:{server.port}"
    private = f"http://127.0.0.1:{private_port}"
    with httpx.Client(timeout=20, trust_env=False) as client:
        # The private listener: the internal API and /health, nothing public.
        assert client.get(f"{private}/internal/billing/status", headers=status_headers).json()[
            "user_id"
        ] == str(user.pk)
        assert client.get(f"{private}/health").status_code == 200
        _error(
            client.get(
                f"{private}/api/v1/keys", headers={"Authorization": f"Bearer {session_token}"}
            ),
            404,
            "not_found",
        )
        # The public listener: no internal API at all.
        _error(
            client.get(f"{public}/internal/billing/status", headers=status_headers),
            404,
            "not_found",
        )
        keys = client.get(
            f"{public}/api/v1/keys", headers={"Authorization": f"Bearer {session_token}"}
        )
        assert keys.status_code == 200


# --- Billing status through checkout, cancellation, a new subscription and a failed renewal


def _customer_id(stripe_api: Any) -> str:
    customers = [o for o in stripe_api.objects.values() if o.get("object") == "customer"]
    assert len(customers) == 1, customers
    return str(customers[0]["id"])


def test_billing_status_follows_a_subscriber(
    start_server: Any,
    stripe_catalogue: Any,
    user: Any,
    session_token: str,
    settings: Any,
) -> None:
    stripe_env = {
        "STRIPE_SECRET_KEY": STRIPE_TEST_KEY,
        "STRIPE_API_BASE": settings.STRIPE_API_BASE,
        "STRIPE_WEBHOOK_SECRET": f.WEBHOOK_SECRET,
    }
    server = start_server(**stripe_env)
    # The web process only stores Stripe's events; the background worker (`run_grants`, a
    # second process in production) mirrors them and moves the plan.
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "run_grants", "--sleep", "0.2"],
        cwd=ROOT,
        env=worker_env(server.database_url, REDIS_URL="", **stripe_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mcp = McpBillingClient(server.url, MCP_SECRET)
    stripe = stripe_catalogue
    web = httpx.Client(base_url=server.url, timeout=20, trust_env=False)
    auth = {"Authorization": f"Bearer {session_token}"}

    def deliver(kind: str, obj: dict[str, Any]) -> None:
        stripe.put(obj)  # what dj-stripe's re-fetch finds
        body = f.event(kind, obj)
        response = web.post(
            "/api/v1/billing/webhooks/stripe",
            content=body,
            headers={"Content-Type": "application/json", "Stripe-Signature": f.signature(body)},
        )
        assert response.status_code == 200, response.text

    def wait_for(**expected: Any) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            status = mcp.get_status(str(user.pk))
            if all(status[name] == value for name, value in expected.items()):
                return status
            assert time.monotonic() < deadline, (expected, status, server.log_tail())
            time.sleep(0.1)

    try:
        assert mcp.get_status(user.auth0_sub)["status"] == "none"
        assert mcp.resolve_tier(str(user.pk)) == "free"

        # Checkout (the gateway creates the Stripe customer), then Stripe's events.
        checkout = web.post("/api/v1/billing/checkout", json={"plan": "explorer"}, headers=auth)
        assert checkout.status_code == 200, checkout.text
        customer = _customer_id(stripe)
        first = f.subscription(customer, "explorer")
        invoice = f.invoice(customer, first, "explorer")
        session = f.subscription_session(customer, user.pk, "explorer", invoice["id"], first["id"])
        deliver("checkout.session.completed", session)
        deliver("customer.subscription.created", first)
        deliver("invoice.paid", invoice)
        active = wait_for(status="active", subscription_tier="explorer")
        assert active["monthly_credits"] == 50 and active["hd_access"] is False
        assert active["cancel_at_period_end"] is False and active["status_source"] == "stripe"
        # Stripe moved the period onto the subscription's items (2025-03-31.basil).
        period_end = (
            first.get("current_period_end") or first["items"]["data"][0]["current_period_end"]
        )
        assert active["current_period_end"].startswith(
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(period_end))
        )
        # The same answer whichever id the service knows the user by.
        assert mcp.get_status(user.auth0_sub) == mcp.get_status(user.flash_user_id) == active
        assert mcp.resolve_tier(user.auth0_sub) == "explorer"

        # Cancelled in the portal: active until the period ends, then canceled.
        deliver("customer.subscription.updated", {**first, "cancel_at_period_end": True})
        ending = wait_for(cancel_at_period_end=True)
        assert ending["status"] == "active" and mcp.resolve_tier(str(user.pk)) == "explorer"
        ended = {**first, "status": "canceled", "cancel_at_period_end": True}
        deliver("customer.subscription.deleted", ended)
        canceled = wait_for(status="canceled", subscription_tier="free")
        assert canceled["monthly_credits"] == 0 and mcp.resolve_tier(str(user.pk)) == "free"

        # Subscribes again; the renewal's payment fails: past due, the plan kept until Stripe
        # gives up, and the MCP server treats it as free.
        second = f.subscription(customer, "explorer")
        deliver("customer.subscription.created", second)
        wait_for(status="active", subscription_tier="explorer")
        failed = {
            **f.invoice(customer, second, "explorer", billing_reason="subscription_cycle"),
            "status": "open",
            "paid": False,
            "amount_paid": 0,
            "attempt_count": 1,
        }
        deliver("invoice.payment_failed", failed)
        deliver("customer.subscription.updated", {**second, "status": "past_due"})
        past_due = wait_for(status="past_due")
        assert (
            past_due["subscription_tier"] == "explorer" and past_due["stripe_status"] == "past_due"
        )
        assert mcp.resolve_tier(str(user.pk)) == "free"

        # An unknown user: 404 JSON, which the MCP client raises on and treats as free.
        with pytest.raises(httpx.HTTPStatusError) as raised:
            mcp.get_status("auth0|nobody")
        _error(raised.value.response, 404, "user_not_found")
        assert mcp.resolve_tier("auth0|nobody") == "free"
    finally:
        web.close()
        mcp.client.close()
        stop_process(worker)


# --- Key verification on both workers; credits


@pytest.mark.skipif(
    not django_settings.REDIS_URL,
    reason="needs REDIS_URL: workers learn of a revocation through the Redis they share",
)
def test_a_revoked_key_is_invalid_within_a_second_on_both_workers(
    start_server: Any, user: Any, make_key: Any, session_token: str
) -> None:
    key, raw = make_key(user)
    server = start_server(REDIS_URL=django_settings.REDIS_URL)
    connections = one_connection_per_worker(server)
    service = {"X-Service-Key": MCP_SECRET}
    try:
        for connection in connections.values():
            status, answer = exchange(
                connection, "POST", "/internal/keys/verify", {"key": raw, "scope": "read"}, service
            )
            assert status == 200 and answer["valid"] is True, answer
            assert answer["owner"]["user_id"] == str(user.pk) and "read" in answer["scopes"]
            # The public routes on this worker have the key cached too.
            status, _ = exchange(connection, "GET", "/api/v1/keys", None, {"X-API-Key": raw})
            assert status == 200

        revoker, other = list(connections.values())
        status, _ = exchange(
            revoker,
            "DELETE",
            f"/api/v1/keys/{key.pk}",
            None,
            {"Authorization": f"Bearer {session_token}"},
        )
        assert status == 204
        revoked_at = time.monotonic()
        _, answer = exchange(revoker, "POST", "/internal/keys/verify", {"key": raw}, service)
        assert answer == {"valid": False, "code": "invalid_api_key"}

        time.sleep(max(0.0, revoked_at + 1.0 - time.monotonic()))
        for connection in (other, revoker):
            _, answer = exchange(connection, "POST", "/internal/keys/verify", {"key": raw}, service)
            assert answer == {"valid": False, "code": "invalid_api_key"}
            status, _ = exchange(connection, "GET", "/api/v1/keys", None, {"X-API-Key": raw})
            assert status == 401
    finally:
        for connection in connections.values():
            connection.close()


def test_credits_check_and_verify_with_charge_through_the_server(
    start_server: Any, user: Any, make_key: Any, flash_peer: Any
) -> None:
    shared_limiter = bool(django_settings.REDIS_URL)
    _, raw = make_key(user, rate_limit_per_minute=4)
    server = start_server(REDIS_URL=django_settings.REDIS_URL) if shared_limiter else start_server()
    mcp = McpBillingClient(server.url, MCP_SECRET)
    try:
        assert mcp.check_balance(user.auth0_sub, 50) == {
            "sufficient": True,
            "balance": 50,
            "reserved": 0,
            "available": 50,
            "cost": 50,
            "user_id": str(user.pk),
        }
        assert mcp.check_balance(str(user.pk), 51)["sufficient"] is False
        with pytest.raises(httpx.HTTPStatusError) as raised:
            mcp.check_balance("auth0|nobody", 1)
        _error(raised.value.response, 404, "user_not_found")
        assert flash_peer.user_balance(user.flash_user_id) == 50  # nothing spent

        if not shared_limiter:
            return  # one in-process limiter per worker: windows are not shared without Redis
        # The key's four requests a minute, spent half through the gateway, half by a sibling.
        for _ in range(2):
            assert (
                mcp.client.get(f"{server.url}/api/v1/keys", headers={"X-API-Key": raw}).status_code
                == 200
            )
        charged = []
        for _ in range(3):
            response = mcp.client.post(
                f"{server.url}/internal/keys/verify",
                json={"key": raw, "charge": True, "route": "/mcp/search"},
                headers={"X-Service-Key": MCP_SECRET},
            )
            response.raise_for_status()
            charged.append(response.json())
        assert [a["valid"] for a in charged] == [True, True, False]
        assert [a["rate_limit"]["minute"]["remaining"] for a in charged[:2]] == [1, 0]
        assert charged[2]["code"] == "rate_limited" and charged[2]["retry_after"] >= 1
        refused = mcp.client.get(f"{server.url}/api/v1/keys", headers={"X-API-Key": raw})
        assert refused.status_code == 429
    finally:
        mcp.client.close()
