"""Suite-wide guards: only loopback is reachable, and every test starts with an empty cache."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test.utils import override_settings

from devpeers import netguard

# Before any test code runs: blocking sockets, asyncio's loop and uvloop's libuv connects.
netguard.install()

# Pages rendered in this process (Django's test client) name their static files unhashed: the
# hashed names need a collected STATIC_ROOT. The production servers the suite starts (browser
# tests, reliability) serve the collected, hashed files as the image does (`collected_static`).
override_settings(
    STORAGES={
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
).enable()


@pytest.fixture(scope="session", autouse=True)
def _postgresql_flush_by_delete() -> Iterator[None]:
    """Empty the tables after a transactional test with DELETE, not TRUNCATE, on PostgreSQL.

    Django's flush truncates every table (~95 with dj-stripe's) after each test that commits for
    real (the production-server, browser and stream tests): a TRUNCATE makes new files for every
    table and index, 3-11 s per test on this machine, most of the suite's time on PostgreSQL.
    DELETE on tables that hold a few rows takes ~0.15 s for all of them; Django's foreign keys are
    DEFERRABLE INITIALLY DEFERRED, so the order does not matter inside flush's one transaction.
    Sequences are reset as before when a test asks for it (reset_sequences=True keeps TRUNCATE).
    """
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def delete(
        self: Any,
        style: Any,
        tables: Any,
        *,
        reset_sequences: bool = False,
        allow_cascade: bool = False,
    ) -> list[str]:
        if reset_sequences or not tables:
            return truncate(
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        return ["SET CONSTRAINTS ALL DEFERRED"] + [
            f"DELETE FROM {self.quote_name(table)}" for table in tables
        ]

    DatabaseOperations.sql_flush = delete  # type: ignore[method-assign]
    yield
    DatabaseOperations.sql_flush = truncate  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def collected_static() -> Path:
    """STATIC_ROOT collected (hashed and compressed) for the production servers tests start; a
    collection newer than every source file is reused."""
    from django.conf import settings

    subprocess.run(
        [sys.executable, "manage.py", "collectstatic_if_changed"],
        cwd=settings.BASE_DIR,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return Path(settings.STATIC_ROOT)


@pytest.fixture(autouse=True)
def _isolated_state(settings: Any) -> Iterator[None]:
    """Nothing leaks from one test to the next: limiter windows, reservations and cached lookups
    (the cache), queued usage records, cached API-key callers, the limiter's Redis breaker. Tests
    flush usage themselves (`flush_usage()`), so the background flusher is off."""
    from django.core.cache import cache

    from apikeys.limiter_redis import reset_breaker
    from apikeys.lookup import key_cache_forget
    from metering import services as metering

    settings.METERING_BACKGROUND_FLUSH = False
    cache.clear()
    metering.usage_buffer_discard()
    key_cache_forget()
    reset_breaker()
    yield
    metering.usage_buffer_discard()
    reset_breaker()


# --- Upstream contract peers on loopback


@pytest.fixture(scope="session")
def _flash_server() -> Iterator[tuple[Any, Any]]:
    from devpeers.server import start_switch

    switch, running = start_switch()
    yield switch, running
    running.stop()


@pytest.fixture(scope="session")
def _clockchain_server() -> Iterator[tuple[Any, Any]]:
    from devpeers.server import start_switch

    switch, running = start_switch()
    yield switch, running
    running.stop()


@pytest.fixture
def flash_peer(_flash_server: tuple[Any, Any], settings: Any) -> Any:
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
def clockchain_peer(_clockchain_server: tuple[Any, Any], settings: Any) -> Any:
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


@pytest.fixture
def other_user(db: Any) -> Any:
    from accounts.models import User

    return User.objects.create_user(username="auth0|other", email="bob@example.com")


@pytest.fixture
def make_key(db: Any) -> Any:
    """`make_key(user, name=..., mode=..., scopes=..., **fields) -> (APIKey, raw key)`.

    Keys made here have every scope unless `scopes` says otherwise (the reach every key had
    before scopes existed), so tests about other things can call any route with them; the
    defaults of a key created through the API are tested in apikeys/tests/test_spend_controls.py."""
    from accounts.scopes import ALL_SCOPES
    from apikeys.services import key_create

    def make(
        user: Any,
        name: str = "test key",
        mode: str = "live",
        scopes: Any = ALL_SCOPES,
        **limits: Any,
    ) -> Any:
        key, raw = key_create(user=user, name=name, mode=mode, scopes=scopes)
        if limits:
            for field, value in limits.items():
                setattr(key, field, value)
            key.save()
        return key, raw

    return make


@pytest.fixture
def smtp(settings: Any) -> Iterator[Any]:
    """A real SMTP server on loopback (aiosmtpd) that keeps every message; the email settings
    point at it."""
    from devpeers.smtp_sink import SmtpSink

    sink = SmtpSink().start()
    for name, value in sink.settings().items():
        setattr(settings, name, value)
    yield sink
    sink.stop()


@pytest.fixture
def oidc_provider(settings: Any) -> Iterator[Any]:
    """A local OpenID provider (Auth0 stand-in) on loopback; the OIDC settings point at it."""
    from tests.browser.oidc_stub import OIDCProviderStub

    stub = OIDCProviderStub(
        claims={"sub": "auth0|portal-dev", "email": "dev@example.com", "name": "Dev Eloper"}
    ).start()
    for name, value in stub.settings().items():
        setattr(settings, name, value)
    yield stub
    stub.stop()


@pytest.fixture
def stripe_api(settings: Any) -> Iterator[Any]:
    """The Stripe-compatible server on loopback (devpeers), with the memo's catalogue."""
    from devpeers.server import start_peer
    from devpeers.stripe_api import StripePeer

    fake = StripePeer()
    running = start_peer(fake)
    settings.STRIPE_API_BASE = running.url
    settings.STRIPE_SECRET_KEY = "sk_test_51GatewayTestKey0000000000000000"
    settings.STRIPE_TEST_SECRET_KEY = "sk_test_51GatewayTestKey0000000000000000"
    settings.STRIPE_LIVE_MODE = False
    yield fake
    running.stop()


@pytest.fixture
def catalogue(request: pytest.FixtureRequest, stripe_api: Any) -> Any:
    """The Stripe server's catalogue, synced into the gateway's database (as its worker does at
    start); the test's database, transactional or not."""
    from payments.catalogue import catalogue_sync
    from tests.database import database_of

    if not database_of(request):
        request.getfixturevalue("db")
    catalogue_sync()
    return stripe_api


# --- What was not run, and why (issue 15)


def _skip_group(reason: str) -> str:
    """The group a skip reason belongs to: what the machine lacked."""
    lowered = reason.lower()
    if "chromium" in lowered or "selenium" in lowered or "browser" in lowered:
        return "no Chromium (browser tests): apt-get install chromium chromium-driver"
    if "postgres" in lowered or "database_url" in lowered:
        return "no PostgreSQL (set DATABASE_URL=postgres://…)"
    if "redis" in lowered:
        return "no Redis (set REDIS_URL=redis://…)"
    return "other"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """At the end of every run: which groups of tests were skipped and why, so a green run on a
    laptop (SQLite, no Redis, no browser) is not mistaken for the whole suite."""
    groups: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        groups.setdefault(_skip_group(reason), []).append(reason)
    terminalreporter.write_sep("=", "skipped groups")
    if not groups:
        terminalreporter.write_line("none: every test ran")
        return
    for group, reasons in sorted(groups.items()):
        terminalreporter.write_line(f"{len(reasons):4d} skipped: {group}")
        for reason in sorted(set(reasons)):
            terminalreporter.write_line(f"       - {reason}")
