from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from accounts.tests.auth0_server import AUDIENCE, FakeAuth0


@pytest.fixture
def auth0(settings: Any) -> Iterator[FakeAuth0]:
    """A fake Auth0 tenant with one signing key; the gateway's settings point at it."""
    fake = FakeAuth0()
    fake.add_key()
    settings.AUTH0_ISSUER = fake.issuer
    settings.AUTH0_JWKS_URL = fake.jwks_url
    settings.AUTH0_USERINFO_URL = f"{fake.url}/userinfo"
    settings.AUTH0_AUDIENCE = AUDIENCE
    settings.AUTH0_JWKS_TIMEOUT = 0.5
    settings.AUTH0_LEEWAY_SECONDS = 5
    yield fake
    fake.stop()


@pytest.fixture
def bearer() -> Any:
    def headers(token: str) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    return headers
