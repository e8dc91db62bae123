"""Flash's answers are given their shapes at the client boundary (upstreams/flash.py): what the
gateway reads is checked there once, and an answer of another shape is Flash's error (502),
never read as zero credits or a KeyError deep inside a service."""

from __future__ import annotations

from typing import Any

import pytest

from timepoint_billing.errors import UpstreamError
from upstreams.flash import credit_balance_from, ledger_entries_from

ROW = {
    "amount": -5,
    "balance_after": 45,
    "type": "generation",
    "description": None,
    "created_at": "2026-12-01T10:00:00",
}


def test_well_formed_answers_keep_their_values() -> None:
    balance = {"balance": 45, "lifetime_earned": 50, "lifetime_spent": 5}
    assert credit_balance_from(balance) == balance
    assert ledger_entries_from([ROW, {**ROW, "description": "[grant:x] 5 credits"}])[0] == ROW


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"balance": "45", "lifetime_earned": 50, "lifetime_spent": 5},
        {"balance": True, "lifetime_earned": 50, "lifetime_spent": 5},
        {"balance": 45, "lifetime_earned": 50},
        {"error": "Credit account not found", "detail": None},
    ],
)
def test_a_balance_of_another_shape_is_refused(body: Any) -> None:
    with pytest.raises(UpstreamError):
        credit_balance_from(body)


@pytest.mark.parametrize(
    "body",
    [
        {"rows": []},
        [{**ROW, "amount": "5"}],
        [{k: v for k, v in ROW.items() if k != "created_at"}],
        [{**ROW, "description": 7}],
        ["row"],
    ],
)
def test_a_history_of_another_shape_is_refused(body: Any) -> None:
    with pytest.raises(UpstreamError):
        ledger_entries_from(body)


def test_clockchain_browse_items_are_typed_and_checked() -> None:
    from upstreams.clockchain import browse_items_from

    body = {"prefix": "/", "items": [{"segment": "1969", "count": 3, "label": "1969"}]}
    assert browse_items_from(body) == [{"segment": "1969", "count": 3}]
    bad_answers: list[Any] = [{"items": None}, [], {"items": [{"segment": "1969", "count": "3"}]}]
    for bad in bad_answers:
        with pytest.raises(UpstreamError):
            browse_items_from(bad)
