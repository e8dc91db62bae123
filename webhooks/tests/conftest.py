"""Webhooks fixtures: a real receiver on loopback, a fast retry schedule."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devpeers.webhook_receiver import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    running = WebhookReceiver().start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _webhook_settings(settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = True  # the receiver is on loopback
    settings.WEBHOOKS_REQUIRE_HTTPS = False
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0  # a failed attempt is due again at once
    settings.WEBHOOK_TIMEOUT_SECONDS = 2.0


@pytest.fixture
def endpoint(user: Any, receiver: WebhookReceiver) -> tuple[Any, str]:
    """An endpoint of `user` on the receiver, subscribed to every event: (endpoint, secret)."""
    from webhooks.models import EventType
    from webhooks.services import endpoint_create

    return endpoint_create(user=user, url=f"{receiver.url}/hooks", events=EventType.values)
