"""Portal fixtures: a signed-in browser session, the OIDC provider stub and the fake Stripe."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client


@pytest.fixture
def portal_client(user: Any) -> Client:
    """A browser session signed in as `user` (the OIDC dance itself is tested on its own)."""
    client = Client()
    client.force_login(user, backend="accounts.oidc.Auth0OIDCBackend")
    return client
