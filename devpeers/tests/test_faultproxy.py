"""The fault proxy really misbehaves the way each mode promises."""

from __future__ import annotations

import time

import httpx
import pytest

from devpeers.clockchain import ClockchainPeer
from devpeers.faultproxy import FaultProxy
from devpeers.server import start_peer


@pytest.fixture
def proxied():
    peer = ClockchainPeer(service_key="k")
    running = start_peer(peer)
    proxy = FaultProxy("127.0.0.1", running.port).start()
    yield peer, proxy
    proxy.stop()
    running.stop()


def test_pass_forwards(proxied) -> None:
    _, proxy = proxied
    assert httpx.get(f"{proxy.url}/health").status_code == 200


def test_refuse_resets(proxied) -> None:
    _, proxy = proxied
    proxy.mode = "refuse"
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"{proxy.url}/health")


def test_hang_times_out(proxied) -> None:
    _, proxy = proxied
    proxy.mode = "hang"
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{proxy.url}/health", timeout=0.3)
    assert time.monotonic() - started < 2


def test_cut_truncates_the_answer(proxied) -> None:
    _, proxy = proxied
    proxy.mode = "cut"
    proxy.cut_after_bytes = 20
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{proxy.url}/health")


def test_drop_after_request_lets_the_upstream_act(proxied) -> None:
    peer, proxy = proxied
    proxy.mode = "drop_after_request"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{proxy.url}/api/v1/stats")
    assert len(peer.requests_to("/api/v1/stats")) == 1
