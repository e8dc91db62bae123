"""Reads of usage for the API and the admin, from the daily/monthly roll-ups."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db.models import Model, QuerySet, Sum

from metering.models import UsageDaily, UsageMonthly, UsageRecord
from metering.services import month_start

_COUNTS = {
    "requests": Sum("requests"),
    "errors": Sum("errors"),
    "credits_spent": Sum("credits_spent"),
}


def _counts(row: dict[str, Any]) -> dict[str, int]:
    return {name: int(row.get(name) or 0) for name in _COUNTS}


def usage_rows(*, granularity: str, start: date, end: date) -> tuple[QuerySet[Any], str]:
    """The aggregate rows covering [start, end] and the name of their period column."""
    model: type[Model]
    if granularity == "month":
        model, column, first = UsageMonthly, "month", month_start(start)
    else:
        model, column, first = UsageDaily, "day", start
    rows = model._default_manager.filter(**{f"{column}__gte": first, f"{column}__lte": end})
    return rows, column


def usage_summary(*, user_id: int, start: date, end: date, granularity: str) -> dict[str, Any]:
    """A user's totals per period, per key and per endpoint."""
    rows, column = usage_rows(granularity=granularity, start=start, end=end)
    rows = rows.filter(user_id=user_id)
    periods = [
        {"period": row[column], **_counts(row)}
        for row in rows.values(column).annotate(**_COUNTS).order_by(column)
    ]
    by_key = [
        {
            "api_key_id": row["api_key_id"],
            "prefix": row["api_key__prefix"] or "",
            "name": row["api_key__name"] or "",
            **_counts(row),
        }
        for row in rows.values("api_key_id", "api_key__prefix", "api_key__name")
        .annotate(**_COUNTS)
        .order_by("api_key_id")
    ]
    by_endpoint = [
        {"endpoint": row["endpoint"], "method": row["method"], **_counts(row)}
        for row in rows.values("endpoint", "method")
        .annotate(**_COUNTS)
        .order_by("endpoint", "method")
    ]
    return {
        "granularity": granularity,
        "from": start,
        "to": end,
        "totals": _counts(rows.aggregate(**_COUNTS)),
        "periods": periods,
        "by_key": by_key,
        "by_endpoint": by_endpoint,
    }


def usage_for_key(*, key_id: int, start: date, end: date, granularity: str) -> dict[str, Any]:
    """One key's counts, errors, credits and p50/p95 latency per period and endpoint."""
    rows, column = usage_rows(granularity=granularity, start=start, end=end)
    rows = rows.filter(api_key_id=key_id)
    return {
        "granularity": granularity,
        "from": start,
        "to": end,
        "totals": _counts(rows.aggregate(**_COUNTS)),
        "rows": [
            {
                "period": row[column],
                "endpoint": row["endpoint"],
                "method": row["method"],
                "requests": row["requests"],
                "errors": row["errors"],
                "credits_spent": row["credits_spent"],
                "p50_ms": row["p50_ms"],
                "p95_ms": row["p95_ms"],
            }
            for row in rows.order_by(column, "endpoint", "method").values()
        ],
    }


# --- The admin's billing dashboard (timepoint_billing/admin_site.py)


def credits_spent_by_day(*, since: date) -> dict[date, int]:
    """Credits spent per day across all callers, from the daily roll-ups."""
    rows = (
        UsageDaily.objects.filter(day__gte=since)
        .values("day")
        .annotate(spent=_COUNTS["credits_spent"])
    )
    return {row["day"]: int(row["spent"] or 0) for row in rows}


def top_keys(*, since: date, limit: int = 10) -> list[dict[str, Any]]:
    """The busiest API keys since `since` (by requests), with their owner's email."""
    rows = (
        UsageDaily.objects.filter(day__gte=since, api_key__isnull=False)
        .values("api_key_id", "api_key__prefix", "api_key__name", "api_key__user__email")
        .annotate(**_COUNTS)
        .order_by("-requests", "api_key_id")[:limit]
    )
    return [
        {
            "api_key_id": row["api_key_id"],
            "prefix": row["api_key__prefix"],
            "name": row["api_key__name"],
            "email": row["api_key__user__email"] or "",
            **_counts(row),
        }
        for row in rows
    ]


EXPORT_RECORD_FIELDS = (
    "request_id",
    "endpoint",
    "method",
    "status",
    "credits_spent",
    "response_time_ms",
    "preset",
    "upstream",
    "partial",
    "created_at",
    "api_key__prefix",
)
EXPORT_AGGREGATE_FIELDS = (
    "endpoint",
    "method",
    "requests",
    "errors",
    "credits_spent",
    "p50_ms",
    "p95_ms",
    "api_key__prefix",
)


def _export_aggregates(model: type[Model], column: str, user: Any) -> list[dict[str, Any]]:
    rows = (
        model._default_manager.filter(user=user)
        .order_by(column, "api_key_id", "endpoint", "method")
        .values(column, *EXPORT_AGGREGATE_FIELDS)
    )
    return [{**row, column: row[column].isoformat()} for row in rows]


def usage_export(sender: object, *, user: Any, **kwargs: object) -> dict[str, object]:
    """`accounts.signals.user_export` receiver: every usage record of the user, newest first (no
    cap: the export is the whole history, so `total_records == len(records)` always), and the
    daily and monthly roll-ups computed from them."""
    records = (
        UsageRecord.objects.filter(user=user)
        .order_by("-created_at", "-id")
        .values(*EXPORT_RECORD_FIELDS)
    )
    rows = [
        {**row, "created_at": row["created_at"].isoformat()}
        for row in records.iterator(chunk_size=2000)
    ]
    return {
        "usage": {
            "total_records": len(rows),
            "records": rows,
            "daily": _export_aggregates(UsageDaily, "day", user),
            "monthly": _export_aggregates(UsageMonthly, "month", user),
        }
    }
