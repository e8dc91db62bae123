"""Bounded database work for web requests: on the production server (gunicorn + the project's
worker, PostgreSQL), a request whose query waits on a lock gets 503 JSON within the configured
time limit instead of holding the worker until the lock is released."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
import pytest
from django.db import connection

from tests.reliability.conftest import assert_json_error

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    "limits",
    [
        {"DB_LOCK_TIMEOUT_MS": "500", "DB_STATEMENT_TIMEOUT_MS": "0"},
        {"DB_LOCK_TIMEOUT_MS": "0", "DB_STATEMENT_TIMEOUT_MS": "500"},
    ],
    ids=["lock_timeout", "statement_timeout"],
)
def test_a_request_blocked_on_a_lock_gets_503_within_the_limit(
    production_gateway: Any, session_token: str, limits: dict[str, str]
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("statement_timeout and lock_timeout are PostgreSQL's")
    server = production_gateway(limits, workers=1)
    auth = {"Authorization": f"Bearer {session_token}"}
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
        assert client.get("/api/v1/keys", headers=auth).status_code == 200
        db = connection.settings_dict
        locker = psycopg.connect(
            host=db["HOST"] or "127.0.0.1",
            port=int(db["PORT"] or 5432),
            user=db["USER"],
            password=db["PASSWORD"] or None,
            dbname=db["NAME"],
        )
        try:
            locker.execute("LOCK TABLE apikeys_apikey IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            blocked = client.get("/api/v1/keys", headers=auth)
            waited = time.monotonic() - started
        finally:
            locker.rollback()
            locker.close()
        assert_json_error(blocked, 503, "database_timeout")
        assert waited < 15  # the limit is 0.5 s; without one the request waits for the lock
        assert client.get("/api/v1/keys", headers=auth).status_code == 200  # and recovers
