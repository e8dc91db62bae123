"""Payments fixtures: a Stripe-compatible server on loopback, grant-worker knobs for fast tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devpeers.server import SwitchApp, start_switch
from devpeers.stripe_api import StripePeer
from payments.tests import factories
from payments.tests.factories import OLD_WEBHOOK_SECRET, WEBHOOK_SECRET
from tests.database import database_of


@pytest.fixture(autouse=True, params=factories.SHAPES, ids=["current_shape", "2024_shape"])
def stripe_shape(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every payments test runs twice: with Stripe objects and events in the current API
    version's shape and in the 2024 one (an endpoint not yet moved sends those)."""
    factories.use_shape(request.param)
    yield request.param
    factories.use_shape(factories.CURRENT)


@pytest.fixture(scope="session")
def _stripe_server() -> Iterator[tuple[SwitchApp, Any]]:
    switch, running = start_switch()
    yield switch, running
    running.stop()


@pytest.fixture(autouse=True)
def stripe_api(
    request: pytest.FixtureRequest, _stripe_server: tuple[SwitchApp, Any], settings: Any
) -> StripePeer:
    """A fresh Stripe-compatible server for every payments test; the SDK (and dj-stripe) talk
    only to it. It starts with the memo's catalogue, which the gateway has synced (as its
    worker does at start) when the test has a database."""
    switch, running = _stripe_server
    fake = StripePeer()  # with the memo's plans and packs, as the Dashboard made them
    fake.event_version = factories.shape()
    switch.target = fake
    settings.STRIPE_API_BASE = running.url
    settings.STRIPE_SECRET_KEY = "sk_test_51GatewayTestKey0000000000000000"
    settings.STRIPE_TEST_SECRET_KEY = "sk_test_51GatewayTestKey0000000000000000"
    settings.STRIPE_LIVE_MODE = False
    settings.STRIPE_WEBHOOK_SECRETS = [WEBHOOK_SECRET, OLD_WEBHOOK_SECRET]
    # A fast, deterministic worker (the tests run it with `run_grants --once`).
    settings.GRANT_RETRY_BASE_SECONDS = 0
    settings.GRANT_RECONCILE_DELAY_SECONDS = 0
    settings.GRANT_BUSY_WAIT_SECONDS = 0.3
    settings.APPLE_ENABLE_ONLINE_CHECKS = False
    if database_of(request):
        from payments.catalogue import catalogue_sync

        catalogue_sync()
    return fake


@pytest.fixture
def customer_id(user: Any, stripe_api: StripePeer) -> str:
    """The user's Stripe customer, created through the gateway (dj-stripe links the user)."""
    from payments import stripe_client

    return stripe_client.customer_for_user(user)
