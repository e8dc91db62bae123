"""Fixtures for the reliability suite: the real ASGI gateway on a loopback port, fault proxies
between it and each contract peer, and helpers to run the production server (gunicorn +
UvicornWorker, the Dockerfile's flags) as a subprocess."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devpeers.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def _gateway_server() -> Iterator[Any]:
    from devpeers.server import start_peer
    from timepoint_billing.asgi import application

    running = start_peer(application)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _reliability_settings(settings: Any) -> Iterator[None]:
    """Limits high enough not to interfere; usage flushed by the tests themselves."""
    from apikeys.limits import reset_breaker
    from metering import services as metering

    settings.USER_RATE_LIMIT_PER_MINUTE = 10_000
    settings.USER_RATE_LIMIT_PER_DAY = 100_000
    settings.USER_CONCURRENCY_LIMIT = 50
    settings.METERING_BACKGROUND_FLUSH = False
    settings.GRANTS_DELIVER_IMMEDIATELY = False
    settings.UPSTREAM_POOL_TIMEOUT = 5.0
    metering.usage_buffer_discard()
    reset_breaker()
    yield
    metering.usage_buffer_discard()
    reset_breaker()


@pytest.fixture
def live_url(_gateway_server: Any, transactional_db: Any) -> str:
    return str(_gateway_server.url)


@pytest.fixture
def gateway(live_url: str, flash_peer: Any, clockchain_peer: Any) -> Iterator[httpx.Client]:
    """An HTTP client to the running gateway (its threads see committed rows only)."""
    with httpx.Client(base_url=live_url, timeout=10, trust_env=False) as client:
        yield client


@pytest.fixture
def auth(session_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {session_token}"}


def _proxy_for(peer_url: str) -> FaultProxy:
    host, port = peer_url.removeprefix("http://").split(":")
    return FaultProxy(host, int(port)).start()


@pytest.fixture
def flash_proxy(flash_peer: Any, settings: Any) -> Iterator[FaultProxy]:
    """A fault proxy between the gateway and the Flash peer (`proxy.mode = "hang"` etc.)."""
    proxy = _proxy_for(flash_peer.url)
    settings.FLASH_URL = proxy.url
    yield proxy
    proxy.stop()


@pytest.fixture
def clockchain_proxy(clockchain_peer: Any, settings: Any) -> Iterator[FaultProxy]:
    proxy = _proxy_for(clockchain_peer.url)
    settings.CLOCKCHAIN_URL = proxy.url
    yield proxy
    proxy.stop()


@pytest.fixture
def usage() -> Any:
    """Flush and return the usage records written so far, oldest first."""

    def rows() -> list[Any]:
        from metering.models import UsageRecord
        from metering.services import flush_usage

        flush_usage()
        return list(UsageRecord.objects.order_by("id"))

    return rows


def wait_for(predicate: Any, timeout: float = 3.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def assert_json_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """The house error shape: `{"detail": str, "code": str}` with the given status."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert isinstance(body.get("code"), str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body


# --- Subprocesses: a database they can open, the production server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def shared_database_url(tmp_path: Path) -> str:
    """A database URL a subprocess can open, holding what this test committed.

    SQLite: a copy of the test database (the subprocess then owns it; read results back from the
    copy). PostgreSQL: the test database itself."""
    from django.db import connection

    if connection.vendor == "sqlite":
        path = tmp_path / "gateway.sqlite3"
        connection.ensure_connection()
        target = sqlite3.connect(path)
        connection.connection.backup(target)
        target.close()
        return f"sqlite:///{path}"
    db = connection.settings_dict
    user = db["USER"] or ""
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    host = db["HOST"] or "127.0.0.1"
    return f"postgres://{user}{password}@{host}:{db['PORT'] or 5432}/{db['NAME']}"


def subprocess_env(**overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "timepoint_billing.settings",
    }
    env.update(overrides)
    return env


def gunicorn_command(port: int, *, workers: int = 2, timeout: int = 420) -> list[str]:
    """The Dockerfile's CMD (minus migrate, plus a loopback port): keep the flags in sync."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "timepoint_billing.asgi:application",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--graceful-timeout",
        "30",
        "--timeout",
        str(timeout),
        "--keep-alive",
        "75",
    ]


def wait_until_serving(url: str, process: subprocess.Popen[bytes], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
