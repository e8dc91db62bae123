"""Fixtures for the key and limiter tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated_limiter_and_metering(settings: Any) -> Iterator[None]:
    """Tests flush usage themselves; no lookup cache or Redis breaker state leaks between tests."""
    from apikeys.limits import reset_breaker
    from apikeys.services import key_cache_forget
    from metering import services as metering

    settings.METERING_BACKGROUND_FLUSH = False
    metering.usage_buffer_discard()
    key_cache_forget()
    reset_breaker()
    yield
    metering.usage_buffer_discard()
    reset_breaker()


@pytest.fixture
def make_key(db: Any) -> Any:
    from apikeys.services import key_create

    def make(user: Any, name: str = "test key", mode: str = "live", **limits: Any) -> Any:
        key, raw = key_create(user=user, name=name, mode=mode)
        if limits:
            for field, value in limits.items():
                setattr(key, field, value)
            key.save()
        return key, raw

    return make


@pytest.fixture
def other_user(db: Any) -> Any:
    from accounts.models import User

    return User.objects.create_user(username="auth0|other", email="bob@example.com")
