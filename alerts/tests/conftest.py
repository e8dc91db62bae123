"""Alerts fixtures: the gateway on a loopback port in front of the Flash peer (the relay tests'
fixtures), and a real SMTP server (aiosmtpd) the gateway's email goes to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devpeers.smtp_sink import SmtpSink
from relay.tests.conftest import _gateway_server, _relay_settings, auth, gateway  # noqa: F401


@pytest.fixture
def smtp(settings: Any) -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    for name, value in sink.settings().items():
        setattr(settings, name, value)
    yield sink
    sink.stop()
