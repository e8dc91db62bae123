"""Fixtures for the peers' own tests: no Django, one loopback server per peer type per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from devpeers.clockchain import ClockchainPeer
from devpeers.flash import FlashPeer
from devpeers.server import RunningPeer, SwitchApp, start_peer, start_switch
from devpeers.stripe_api import StripePeer


@pytest.fixture(autouse=True)
def _isolated_state() -> Iterator[None]:
    """Overrides the suite-wide Django cache fixture: these tests never touch Django."""
    yield


@pytest.fixture(scope="session")
def _flash_running() -> Iterator[tuple[SwitchApp, RunningPeer]]:
    switch, running = start_switch()
    yield switch, running
    running.stop()


@pytest.fixture(scope="session")
def _clockchain_running() -> Iterator[tuple[SwitchApp, RunningPeer]]:
    switch, running = start_switch()
    yield switch, running
    running.stop()


@pytest.fixture
def flash(_flash_running: tuple[SwitchApp, RunningPeer]) -> FlashPeer:
    switch, running = _flash_running
    peer = FlashPeer()
    peer.url = running.url
    switch.target = peer
    return peer


@pytest.fixture
def clockchain(_clockchain_running: tuple[SwitchApp, RunningPeer]) -> ClockchainPeer:
    switch, running = _clockchain_running
    peer = ClockchainPeer()
    peer.url = running.url
    switch.target = peer
    return peer


@pytest.fixture
def peer() -> Iterator[tuple[StripePeer, stripe.StripeClient]]:
    """A fresh Stripe-compatible server, and the official SDK talking to it."""
    fake = StripePeer()
    running: RunningPeer = start_peer(fake)
    client = stripe.StripeClient(
        "sk_test_peer",
        base_addresses={"api": running.url},
        http_client=stripe.RequestsClient(),
        max_network_retries=0,
    )
    yield fake, client
    running.stop()
