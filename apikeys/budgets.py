"""Monthly credit budgets per API key: the hold before Flash, the settlement after, the refund.

A generation on a live key with a budget writes a `KeySpend` row (its price) before Flash is called,
with the key row locked (`SELECT … FOR UPDATE`), after summing what the key already spent this UTC
month: N parallel generations on one key, on any number of workers, queue on that lock and the ones
the budget cannot cover get 402 `budget_exhausted`. The row is written for every live key, budget or
not, so a budget set mid-month counts what was already spent and the usage API can show the month.
A key without a budget has nothing to compare, so its row is written without the lock: its
parallel streams must not queue on one row (issue 17, the SSE throughput). The key's budget is read
again once that row is committed, so a budget set meanwhile is never passed (see `budget_hold`).

The relay calls these around its credit reservation (`relay.services.generation_admit`): the budget
hold first, then the balance check and the credit reservation; when those refuse, the budget hold is
dropped again, so both holds stand or fall together. The generation's outcome is settled in one
place, `relay.refunds.settle_record` (Flash's answer or, when it was lost, the reconcile worker): it
settles the row with what Flash charged and, where it pays a refund, gives the amount back to the
month, in the same transaction and once per generation. A lost answer leaves the hold counted
until the worker settles it.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apikeys.models import APIKey, KeySpend, month_start
from apikeys.selectors import key_month_spent
from timepoint_billing.db import row_insert
from timepoint_billing.errors import BudgetExhausted

logger = logging.getLogger("timepoint.apikeys")


def budget_hold(*, key: APIKey, request_id: str, amount: int) -> None:
    """Count `amount` against the key's month before Flash is called, or raise 402
    `budget_exhausted` (with `budget`, `spent` and `cost`) when it would pass the budget.

    `key` is the key as the caller authenticated it (perhaps a few seconds old, from the key
    cache): its budget only chooses the path, the database decides. Without a budget the row is
    written at once, committed, and the budget read after it: None then means any budget set later
    is compared under the lock with this row already counted; a budget found means one was set
    meanwhile, and the row is written again under the lock like any budgeted key's."""
    if key.monthly_credit_budget is None:
        # Every generation of such a key runs these two statements: without the ORM's query
        # compilation (~250 µs of CPU each, issue 17).
        try:
            row_insert(
                KeySpend,
                api_key_id=key.pk,
                request_id=request_id,
                month=month_start(),
                amount=amount,
            )
        except IntegrityError:
            if not APIKey.objects.filter(pk=key.pk).exists():
                return  # deleted since authentication: nothing to count against
            raise
        if _budget_now(key.pk) is None:
            return
        budget_drop(request_id=request_id)
    _budget_hold_locked(key_id=key.pk, request_id=request_id, amount=amount)


def _budget_now(key_id: int) -> int | None:
    """The key's budget as committed now (None: no budget, or the key is gone)."""
    quote = connection.ops.quote_name
    field = APIKey._meta.get_field("monthly_credit_budget")
    # Identifiers come from the model's own metadata; the id is a bound parameter.
    sql = (
        f"SELECT {quote(field.column)} FROM {quote(APIKey._meta.db_table)} "  # noqa: S608
        f"WHERE {quote(APIKey._meta.pk.column)} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [key_id])
        row = cursor.fetchone()
    return None if row is None else row[0]


@transaction.atomic
def _budget_hold_locked(*, key_id: int, request_id: str, amount: int) -> None:
    key = APIKey.objects.select_for_update().filter(pk=key_id).first()
    if key is None:  # deleted between authentication and now: nothing to count against
        return
    month = month_start()
    budget = key.monthly_credit_budget
    if budget is not None:
        spent = key_month_spent(key_id=key.pk, month=month)
        if spent + amount > budget:
            raise BudgetExhausted(
                f"This generation costs {amount} credits; this key has spent {spent} of its "
                f"{budget}-credit budget for {month:%B %Y} (UTC).",
                extra={"budget": budget, "spent": spent, "cost": amount, "month": str(month)},
            )
    KeySpend.objects.create(api_key=key, request_id=request_id, month=month, amount=amount)


def budget_drop(*, request_id: str) -> None:
    """Forget a hold whose generation never reached Flash (the balance check or the credit
    reservation refused it)."""
    KeySpend.objects.filter(request_id=request_id, settled_at__isnull=True).delete()


def budget_settle(*, request_id: str, charged: int) -> None:
    """Replace the hold by what Flash charged (0: it answered an error and charged nothing).
    Settles once; a generation whose outcome is unknown is left held (Flash probably charged)."""
    KeySpend.objects.filter(request_id=request_id, settled_at__isnull=True).update(
        amount=max(0, charged), settled_at=timezone.now()
    )


def budget_refund(*, request_id: str) -> bool:
    """Give a refunded generation's credits back to its key's month (idempotent). True when a
    spend was given back."""
    given_back = KeySpend.objects.filter(request_id=request_id, refunded_at__isnull=True).update(
        refunded_at=timezone.now()
    )
    if given_back:
        logger.info({"event": "key_budget_refunded", "request_id": request_id})
    return bool(given_back)
