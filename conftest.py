"""Suite-wide guards: only loopback is reachable, and every test starts with an empty cache."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # unix sockets (the local PostgreSQL socket) stay on this machine
    host = address[0]
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_loopback(address):
        raise OSError(f"test tried to reach {address!r}: only loopback is allowed in tests")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _is_loopback(address):
        raise OSError(f"test tried to reach {address!r}: only loopback is allowed in tests")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign,assignment]


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """Limiter windows, cached lookups and reservations never leak from one test to the next."""
    from django.core.cache import cache

    cache.clear()
    yield


# --- Upstream contract peers on loopback
# One server per session for each upstream; each test gets a fresh peer object behind it, so state
# and knobs never leak between tests while the (slower) server start happens once.


class _Switch:
    """An ASGI app that forwards to whichever peer the current test installed."""

    def __init__(self) -> None:
        self.target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


@pytest.fixture(scope="session")
def _flash_server() -> Iterator[tuple[_Switch, Any]]:
    from devpeers.server import start_peer

    switch = _Switch()
    running = start_peer(switch)
    yield switch, running
    running.stop()


@pytest.fixture(scope="session")
def _clockchain_server() -> Iterator[tuple[_Switch, Any]]:
    from devpeers.server import start_peer

    switch = _Switch()
    running = start_peer(switch)
    yield switch, running
    running.stop()


@pytest.fixture
def flash_peer(_flash_server: tuple[_Switch, Any], settings: Any) -> Any:
    """A fresh Flash contract peer on loopback; the gateway's settings point at it."""
    from devpeers.flash import FlashPeer

    switch, running = _flash_server
    peer = FlashPeer(
        service_key="test-flash-service-key",
        admin_key="test-flash-admin-key",
        signing_secret="test-flash-signing-secret",
    )
    switch.target = peer
    settings.FLASH_URL = running.url
    settings.FLASH_SERVICE_KEY = peer.service_key
    settings.FLASH_ADMIN_KEY = peer.admin_key
    settings.FLASH_GATEWAY_SIGNING_SECRET = peer.signing_secret
    peer.url = running.url
    return peer


@pytest.fixture
def clockchain_peer(_clockchain_server: tuple[_Switch, Any], settings: Any) -> Any:
    """A fresh Clockchain contract peer on loopback; the gateway's settings point at it."""
    from devpeers.clockchain import ClockchainPeer

    switch, running = _clockchain_server
    peer = ClockchainPeer(service_key="test-clockchain-service-key")
    switch.target = peer
    settings.CLOCKCHAIN_URL = running.url
    settings.CLOCKCHAIN_SERVICE_KEY = peer.service_key
    peer.url = running.url
    return peer


@pytest.fixture
def user(db: Any, flash_peer: Any) -> Any:
    """A signed-up user: a local row with its Flash user (50 signup credits) already resolved."""
    from accounts.models import User

    sub = "auth0|test-user-1"
    flash_id = flash_peer.add_user(sub, email="ada@example.com", display_name="Ada")
    return User.objects.create_user(
        username=sub, email="ada@example.com", auth0_sub=sub, flash_user_id=flash_id
    )


@pytest.fixture
def session_token(user: Any) -> str:
    from accounts.services import session_create

    _, raw = session_create(user=user)
    return raw


@pytest.fixture
def auth_headers(session_token: str) -> dict[str, Any]:
    """Django test-client kwargs that authenticate as `user` with a gateway session."""
    return {"HTTP_AUTHORIZATION": f"Bearer {session_token}"}
