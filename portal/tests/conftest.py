"""Portal fixtures: a signed-in browser session, the OIDC provider stub and the fake Stripe."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from tests.browser.oidc_stub import OIDCProviderStub


@pytest.fixture(autouse=True)
def _isolated_metering(settings: Any) -> Iterator[None]:
    """Tests flush usage themselves, and no queued record or cached key leaks between tests."""
    from apikeys.services import key_cache_forget
    from metering import services as metering

    settings.METERING_BACKGROUND_FLUSH = False
    metering.usage_buffer_discard()
    key_cache_forget()
    yield
    metering.usage_buffer_discard()


@pytest.fixture
def portal_client(user: Any) -> Client:
    """A browser session signed in as `user` (the OIDC dance itself is tested on its own)."""
    client = Client()
    client.force_login(user, backend="accounts.oidc.Auth0OIDCBackend")
    return client


@pytest.fixture
def oidc_provider(settings: Any) -> Iterator[OIDCProviderStub]:
    stub = OIDCProviderStub(
        claims={"sub": "auth0|portal-dev", "email": "dev@example.com", "name": "Dev Eloper"}
    ).start()
    for name, value in stub.settings().items():
        setattr(settings, name, value)
    yield stub
    stub.stop()


@pytest.fixture
def stripe_api(settings: Any) -> Iterator[Any]:
    """payments' Stripe-compatible server on loopback, with its test price ids configured."""
    from devpeers.server import start_peer
    from payments.tests.factories import PRICE_IDS
    from payments.tests.fakestripe import FakeStripe

    fake = FakeStripe()
    running = start_peer(fake)
    settings.STRIPE_API_BASE = running.url
    settings.STRIPE_SECRET_KEY = "sk_test_portal"
    settings.STRIPE_TEST_SECRET_KEY = "sk_test_portal"
    settings.STRIPE_LIVE_MODE = False
    settings.STRIPE_PRICE_IDS = dict(PRICE_IDS)
    yield fake
    running.stop()
