"""The staff reconcile against Flash's ledger: bounded in time per call, resumable by cursor."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def _ledger(flash_peer: Any, user: Any, rows: list[tuple[int, str]]) -> None:
    """Rows written straight into the Flash peer's ledger (oldest first), as Flash would."""
    from devpeers.flash import LedgerRow

    with flash_peer.lock:
        ledger = flash_peer.ledger.setdefault(user.flash_user_id, [])
        for amount, kind in rows:
            ledger.append(LedgerRow(amount=amount, balance_after=0, type=kind, description=None))


def _staff(user: Any) -> None:
    user.is_staff = True
    user.save()


def test_a_long_ledger_is_read_over_several_bounded_calls(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, settings: Any
) -> None:
    _staff(user)
    # 530 rows: 400 charges of 5, 130 refunds of 5 -> 2000 charged, 650 refunded.
    _ledger(flash_peer, user, [(-5, "generation")] * 400 + [(5, "refund")] * 130)
    url = f"/api/v1/staff/credits/reconcile/{user.pk}"
    settings.RECONCILE_BUDGET_SECONDS = 0.5
    flash_peer.delay = 0.3  # each ledger page takes 0.3 s: one call reads about two
    calls = 0
    cursor = ""
    while True:
        started = time.monotonic()
        answer = gateway.get(url, params={"cursor": cursor} if cursor else {}, headers=auth)
        took = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        body = answer.json()
        calls += 1
        assert took < 5  # bounded: the budget, one page's overrun and the balance call
        if body["complete"]:
            break
        assert body["difference"] is None and body["next_cursor"]
        cursor = body["next_cursor"]
        assert calls < 20
    assert calls >= 2
    assert (body["flash_charged"], body["flash_refunded"], body["ledger_rows_read"]) == (
        2000,
        650,
        530,
    )
    assert body["difference"] == 0 - (2000 - 650)
    assert body["next_cursor"] is None


def test_a_ledger_that_grew_between_calls_is_not_counted_twice(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, settings: Any
) -> None:
    _staff(user)
    _ledger(flash_peer, user, [(-5, "generation")] * 250)
    url = f"/api/v1/staff/credits/reconcile/{user.pk}"
    settings.RECONCILE_BUDGET_SECONDS = 0.3
    flash_peer.delay = 0.2
    first = gateway.get(url, headers=auth).json()
    assert first["complete"] is False
    _ledger(flash_peer, user, [(-10, "generation")] * 3)  # new rows at the top shift offsets
    settings.RECONCILE_BUDGET_SECONDS = 30
    flash_peer.delay = 0
    last = gateway.get(url, params={"cursor": first["next_cursor"]}, headers=auth).json()
    assert last["complete"] is True
    assert (last["flash_charged"], last["ledger_rows_read"]) == (1280, 253)


def test_a_forged_cursor_is_refused(gateway: Any, auth: Any, flash_peer: Any, user: Any) -> None:
    _staff(user)
    url = f"/api/v1/staff/credits/reconcile/{user.pk}"
    bad = gateway.get(url, params={"cursor": "eyJvZmZzZXQiOjB9:forged"}, headers=auth)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"
