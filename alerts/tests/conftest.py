"""Alerts fixtures: the gateway on a loopback port in front of the Flash peer (the relay tests'
fixtures); the real SMTP server (`smtp`) is the suite's."""

from __future__ import annotations

from relay.tests.conftest import _gateway_server, _relay_settings, auth, gateway  # noqa: F401
