"""Requests presenting the same credential at the same moment share one lookup when it succeeds,
and each count as their own failure when it does not (accounts.authentication._looked_up)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from django.db.backends.signals import connection_created
from django.test import RequestFactory

from accounts.authentication import aauthenticate
from apikeys.lookup import key_cache_forget
from timepoint_billing.errors import ApiError


@pytest.fixture
def key_selects() -> Iterator[list[str]]:
    """The SELECTs on the keys table, from every connection opened meanwhile (the lookups run
    on the event loop's threads, each on a connection of its own)."""
    seen: list[str] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith("SELECT") and '"apikeys_apikey"' in sql:
            seen.append(sql)
        return execute(sql, params, many, context)

    def install(sender: Any, connection: Any, **kwargs: Any) -> None:
        if watch not in connection.execute_wrappers:
            connection.execute_wrappers.append(watch)

    connection_created.connect(install)
    yield seen
    connection_created.disconnect(install)


async def _at_once(raw: str, count: int, address: str = "10.0.0.5") -> list[Any]:
    factory = RequestFactory()
    requests = [factory.get("/api/v1/browse", HTTP_X_API_KEY=raw, REMOTE_ADDR=address)]
    requests += [factory.get("/api/v1/browse", HTTP_X_API_KEY=raw) for _ in range(count - 1)]
    return await asyncio.gather(*(aauthenticate(r) for r in requests), return_exceptions=True)


def test_one_lookup_answers_every_request_of_a_key_that_missed_the_cache(
    transactional_db: Any, user: Any, make_key: Any, key_selects: list[str]
) -> None:
    key, raw = make_key(user)
    key_cache_forget()
    callers = asyncio.run(_at_once(raw, 20))
    assert all(not isinstance(c, BaseException) and c.api_key.pk == key.pk for c in callers)
    assert len(key_selects) == 1
    # Cached from then on: no further lookup.
    asyncio.run(_at_once(raw, 5))
    assert len(key_selects) == 1


def test_each_failing_request_is_counted_by_the_failure_throttle(
    transactional_db: Any, settings: Any
) -> None:
    settings.AUTH_FAILURE_LIMIT_PER_MINUTE = 5
    raw = "tp_live_" + "x" * 40  # malformed: refused without a lookup, counted all the same
    answers = asyncio.run(_at_once(raw, 5))
    assert [a.code for a in answers] == ["invalid_api_key"] * 5  # five failures, five counts
    (sixth,) = asyncio.run(_at_once(raw, 1))
    assert isinstance(sixth, ApiError) and sixth.code == "too_many_auth_failures"
