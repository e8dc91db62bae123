"""Fixtures for the reliability suite: the real ASGI gateway on a loopback port, fault proxies
between it and each contract peer, and helpers to run the production server (gunicorn +
UvicornWorker, the Dockerfile's flags) as a subprocess."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devpeers.faultproxy import FaultProxy
from devpeers.webhook_receiver import WebhookReceiver

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
    from apikeys.limiter_redis import reset_breaker
    from metering import services as metering

    settings.USER_RATE_LIMIT_PER_MINUTE = 10_000
    settings.USER_RATE_LIMIT_PER_DAY = 100_000
    settings.USER_CONCURRENCY_LIMIT = 50
    settings.METERING_BACKGROUND_FLUSH = False
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


# A Redis db for tests that need one even when the suite runs without REDIS_URL (SQLite runs).
LOCAL_REDIS = "redis://127.0.0.1:6379/11"


def any_redis_url() -> str | None:
    """REDIS_URL, else a local Redis server if one answers; None when there is none."""
    url = os.environ.get("REDIS_URL") or LOCAL_REDIS
    try:
        redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return None
    return url


def redis_caches(settings: Any, url: str, prefix: str) -> dict[str, Any]:
    """CACHES for the default cache on `url` (django-redis, the production options) under its
    own key prefix, for a test that points the gateway at a Redis of its own."""
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": prefix,
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": settings.REDIS_CONNECT_TIMEOUT,
                "SOCKET_TIMEOUT": settings.REDIS_SOCKET_TIMEOUT,
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }


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
    return live_database_url()


def live_database_url() -> str:
    """The test database itself (SQLite: its file, WAL mode), for a server that shares it with
    the test: what either side commits, the other sees."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
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


def gunicorn_command(
    port: int,
    *,
    workers: int = 2,
    timeout: int = 420,
    keep_alive: int = 75,
    extra_ports: tuple[int, ...] = (),
) -> list[str]:
    """The Dockerfile's CMD (minus migrate, plus a loopback port): keep the flags in sync.
    `extra_ports`: more loopback listeners (the Dockerfile's INTERNAL_API_PORT bind)."""
    extra_binds = [arg for extra in extra_ports for arg in ("--bind", f"127.0.0.1:{extra}")]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",  # the Dockerfile's server; the flags below override its values
        "timepoint_billing.asgi:application",
        "-k",
        "timepoint_billing.server.GatewayUvicornWorker",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--graceful-timeout",
        "30",
        "--timeout",
        str(timeout),
        "--keep-alive",
        str(keep_alive),
        *extra_binds,
    ]


def wait_until_serving(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    # Generous: on a loaded 2-core machine two workers importing Django took over 40 s.
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


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn master's children (its workers), from /proc."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    try:
        return sorted(int(pid) for pid in children.read_text().split())
    except OSError:
        return []


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


class ProductionGateway:
    """The Dockerfile's server (gunicorn + UvicornWorker, DEBUG off) on a loopback port, in front
    of the contract peers the test's settings point at. `stop()` is a graceful SIGTERM."""

    def __init__(
        self,
        tmp_path: Path,
        env: dict[str, str],
        *,
        workers: int = 2,
        keep_alive: int = 75,
        database_url: str | None = None,
        extra_ports: tuple[int, ...] = (),
    ) -> None:
        from django.conf import settings

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url or shared_database_url(tmp_path)
        self.log = tmp_path / "gunicorn.log"
        overrides = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": "",
            "DEBUG": "false",
            # Keys and sessions the test made must verify in the server: same digest secrets.
            "SECRET_KEY": settings.SECRET_KEY,
            "API_KEY_DIGEST_SECRET": settings.API_KEY_DIGEST_SECRET,
            "FLASH_URL": settings.FLASH_URL,
            "FLASH_SERVICE_KEY": settings.FLASH_SERVICE_KEY,
            "FLASH_ADMIN_KEY": settings.FLASH_ADMIN_KEY,
            "FLASH_GATEWAY_SIGNING_SECRET": settings.FLASH_GATEWAY_SIGNING_SECRET,
            "CLOCKCHAIN_URL": settings.CLOCKCHAIN_URL,
            "CLOCKCHAIN_SERVICE_KEY": settings.CLOCKCHAIN_SERVICE_KEY,
            "DB_CONN_MAX_AGE": "60",
            **env,
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                gunicorn_command(
                    self.port, workers=workers, keep_alive=keep_alive, extra_ports=extra_ports
                ),
                cwd=ROOT,
                env=subprocess_env(**overrides),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_serving(self.url, self.process)
            deadline = time.monotonic() + 20
            while len(self.worker_pids()) < workers:  # /health answered by one: wait for all
                assert time.monotonic() < deadline, "gunicorn did not start its workers"
                time.sleep(0.1)
        except BaseException:
            self.kill()
            raise

    def worker_pids(self) -> list[int]:
        return worker_pids(self.process.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM (workers finish, flush their usage buffers at exit), then wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.returncode)

    def kill(self) -> None:
        pids = self.worker_pids()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for pid in pids:  # orphaned workers would keep the port and the database
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def production_gateway(tmp_path: Path) -> Iterator[Any]:
    """`production_gateway({"NAME": "value"}) -> ProductionGateway` (environment overrides);
    every server started is killed at the end if the test did not stop it."""
    started: list[ProductionGateway] = []

    def start(
        env: dict[str, str] | None = None,
        *,
        workers: int = 2,
        keep_alive: int = 75,
        extra_ports: tuple[int, ...] = (),
    ) -> ProductionGateway:
        server = ProductionGateway(
            tmp_path, env or {}, workers=workers, keep_alive=keep_alive, extra_ports=extra_ports
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def worker_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a background worker (`manage.py run_grants`) beside a server the test
    started: the test's database, digest secrets and upstream peers."""
    from django.conf import settings

    return subprocess_env(
        DATABASE_URL=database_url,
        SECRET_KEY=settings.SECRET_KEY,
        API_KEY_DIGEST_SECRET=settings.API_KEY_DIGEST_SECRET,
        FLASH_URL=settings.FLASH_URL,
        FLASH_SERVICE_KEY=settings.FLASH_SERVICE_KEY,
        FLASH_ADMIN_KEY=settings.FLASH_ADMIN_KEY,
        FLASH_GATEWAY_SIGNING_SECRET=settings.FLASH_GATEWAY_SIGNING_SECRET,
        **overrides,
    )


# --- The production server with two background workers (webhooks, alerts)

# Webhook retries come quickly here (the default schedule starts at a minute); the deadline is
# short so a hanging receiver costs a second.
FAST_RETRIES = {
    "WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "WEBHOOK_TIMEOUT_SECONDS": "1",
    "WEBHOOK_WORKER_SLEEP_SECONDS": "0.2",
}


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A developer's webhook receiver on loopback (devpeers/webhook_receiver.py)."""
    running = WebhookReceiver().start()
    yield running
    running.stop()


@pytest.fixture
def production_stack_env() -> dict[str, str]:
    """More environment for the server and the workers (a test module may override it)."""
    return {}


@pytest.fixture
def production_stack(
    tmp_path: Path,
    flash_peer: Any,
    clockchain_peer: Any,
    settings: Any,
    production_stack_env: dict[str, str],
) -> Iterator[tuple[ProductionGateway, list[subprocess.Popen[bytes]]]]:
    """The production server and two background workers on the test database and Redis."""
    shared = {"REDIS_URL": settings.REDIS_URL, **FAST_RETRIES, **production_stack_env}
    server = ProductionGateway(tmp_path, shared, database_url=live_database_url())
    env = worker_env(server.database_url, METERING_BACKGROUND_FLUSH="false", **shared)
    logs = [(tmp_path / f"worker-{n}.log").open("wb") for n in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "manage.py", "run_grants", "--sleep", "0.2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for log in logs
    ]
    try:
        yield server, workers
    finally:
        for worker in workers:
            stop_process(worker)
        for log in logs:
            log.close()
        server.stop()


# --- Talking to each worker of a production server (tests of cross-worker guarantees)


def worker_of(server: Any, connection: http.client.HTTPConnection) -> int | None:
    """The worker holding the server side of this client connection (from /proc)."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == server.port and remote_port == client_port:
                inode = fields[9]
    if inode is None:
        return None
    for pid in server.worker_pids():
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{descriptor}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    payload = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=payload, headers=all_headers)
    response = connection.getresponse()
    raw = response.read()
    return response.status, json.loads(raw) if raw else None


def one_connection_per_worker(server: Any) -> dict[int, http.client.HTTPConnection]:
    """Keep-alive connections, opened until each worker holds one (bounded)."""
    found: dict[int, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    workers = set(server.worker_pids())
    for _ in range(60):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        status, _ = exchange(connection, "GET", "/health")
        assert status == 200
        pid = worker_of(server, connection)
        if pid is not None and pid not in found:
            found[pid] = connection
        else:
            spare.append(connection)
        if set(found) == workers:
            break
    for connection in spare:
        connection.close()
    assert set(found) == workers and len(workers) == 2, (found, workers)
    return found


def generations_at_once(web: httpx.Client, count: int) -> list[int]:
    """`count` generations sent at once through `web` (spread over the server's workers);
    returns their statuses."""
    statuses: list[int] = []

    def generate() -> None:
        response = web.post("/api/v1/generate", json={"query": "The fall of Rome"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=generate) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses
