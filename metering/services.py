"""Usage metering: records are buffered in-process and written in batches, off the request path.

Guarantee (and its limit, honestly):
- `record_usage` is a list append under a lock: no I/O, safe to call from async code.
- A background thread flushes every METERING_FLUSH_INTERVAL_SECONDS with one `bulk_create`
  (ignore_conflicts on the unique request_id); `flush_usage()` does the same on demand, and a
  graceful stop flushes the rest: the ASGI lifespan shutdown in the web workers (SIGTERM to
  uvicorn/gunicorn; `atexit` never runs there, uvicorn re-raises the signal), `atexit` elsewhere.
- A batch leaves the buffer only after its insert committed. A failed flush keeps it; the retry
  re-inserts it and the unique request_id turns rows that did land the first time into no-ops, so
  a retried flush never double-counts.
- The buffer is bounded by METERING_BUFFER_MAX: a synchronous caller that finds it full flushes
  inline (back-pressure) instead of dropping. On the event loop we must not block on the database,
  so an async caller only wakes the flusher; the buffer may then exceed the bound while the database
  is slower than traffic. Nothing acknowledged is ever dropped.
- Not covered: `kill -9` (or an OOM kill) of a worker loses the records of at most the last flush
  interval (~1 s). A Redis list (RPUSH per request) would close that gap at the cost of a Redis
  round trip per request on the hot path; the benchmark issue (9) weighs that cost, so the
  in-process buffer is the current choice.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import threading
import uuid
from collections import defaultdict, deque
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from metering.models import UsageDaily, UsageMonthly, UsageRecord

logger = logging.getLogger("timepoint.metering")

FLUSH_BATCH_SIZE = 1000

_buffer: deque[dict[str, Any]] = deque()
_buffer_lock = threading.Lock()
_flush_lock = threading.Lock()  # one flush at a time per process
_wake = threading.Event()
_flusher: dict[str, threading.Thread | None] = {"thread": None}
_flusher_start_lock = threading.Lock()


def usage_record_id(request: Any) -> str:
    """The unique id of this call's usage record (and of anything keyed on the call, such as a
    refund): the gateway's own request id, never the client's. A client may send any well-formed
    X-Request-ID, and the same one every time: keyed on it, every later record would be dropped
    as a duplicate and every later refund skipped. The client's id stays the log's correlation id.
    """
    own = getattr(request, "request_id", "") or ""
    supplied = request.headers.get("X-Request-ID", "") if hasattr(request, "headers") else ""
    if own and own != supplied:
        return str(own)
    return uuid.uuid4().hex


def record_usage(
    *,
    request_id: str,
    user_id: int | None,
    api_key_id: int | None,
    endpoint: str,
    method: str,
    status: int,
    credits_spent: int,
    response_time_ms: float,
    preset: str = "",
    upstream: str = "",
    partial: bool = False,
) -> None:
    """Queue one usage record (no database I/O here; see the module docstring for guarantees).

    `endpoint` is the route pattern (`/api/v1/keys/<int:key_id>`), never the raw path; `request_id`
    must be unique per call (`usage_record_id(request)`)."""
    row = {
        "request_id": request_id,
        "user_id": user_id,
        "api_key_id": api_key_id,
        "endpoint": endpoint[:200],
        "method": method[:8],
        "status": status,
        "credits_spent": credits_spent,
        "response_time_ms": round(response_time_ms, 3),
        "preset": preset[:32],
        "upstream": upstream[:16],
        "partial": partial,
        "created_at": timezone.now(),
    }
    with _buffer_lock:
        _buffer.append(row)
        size = len(_buffer)
    _ensure_flusher()
    if size >= settings.METERING_BUFFER_MAX:
        if _on_event_loop():
            _wake.set()
        else:
            flush_usage()


def pending_usage_count() -> int:
    """Records queued in this process and not yet written."""
    return len(_buffer)


def usage_buffer_discard() -> int:
    """Drop everything queued in this process (tests only: production never discards)."""
    with _buffer_lock:
        dropped = len(_buffer)
        _buffer.clear()
    return dropped


def usage_write_batch(rows: list[dict[str, Any]]) -> None:
    """Insert rows; rows whose request_id is already stored are skipped (exactly-once).

    One `INSERT … ON CONFLICT (request_id) DO NOTHING` run for the batch (PostgreSQL, and SQLite
    since 3.24), each value prepared by its model field as the ORM would. Not `bulk_create`:
    it built a model instance and sent two signals per record, which on a busy worker was a
    measurable share of the CPU the relay needs (issue 9)."""
    if not rows:
        return
    fields = [field for field in UsageRecord._meta.concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    table = quote(UsageRecord._meta.db_table)
    columns = ", ".join(quote(field.column) for field in fields)
    values = ", ".join(["%s"] * len(fields))
    conflict = quote("request_id")
    # Identifiers come from the model's own metadata; every value is a bound parameter.
    sql = f"INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT ({conflict}) DO NOTHING"  # noqa: S608
    params = [
        [
            field.get_db_prep_save(
                row[field.attname] if field.attname in row else field.get_default(), connection
            )
            for field in fields
        ]
        for row in rows
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, params)


def flush_usage() -> int:
    """Write everything queued so far, in batches; returns the number of records flushed.

    Synchronous (database I/O): call it from a thread, a test or a management command, not from
    the event loop. A batch is removed from the buffer only after its insert committed."""
    flushed = 0
    with _flush_lock:
        while True:
            with _buffer_lock:
                batch = list(islice(_buffer, 0, FLUSH_BATCH_SIZE))
            if not batch:
                return flushed
            usage_write_batch(batch)
            with _buffer_lock:
                # Only flushes remove from the left and they are serialised: these are `batch`.
                for _ in batch:
                    _buffer.popleft()
            flushed += len(batch)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _flush_forever() -> None:
    while True:
        _wake.wait(settings.METERING_FLUSH_INTERVAL_SECONDS)
        _wake.clear()
        if not settings.METERING_BACKGROUND_FLUSH or not _buffer:
            continue
        close_old_connections()
        try:
            flush_usage()
        except Exception:
            # The rows stay queued; the next interval retries them.
            logger.exception("usage flush failed; will retry")
        finally:
            close_old_connections()


def _ensure_flusher() -> None:
    thread = _flusher["thread"]
    if thread is not None and thread.is_alive():
        return
    with _flusher_start_lock:
        thread = _flusher["thread"]
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=_flush_forever, name="usage-flusher", daemon=True)
            thread.start()
            _flusher["thread"] = thread


def usage_flush_at_shutdown() -> None:
    """Write what is buffered, at a graceful stop: the ASGI lifespan shutdown (the web workers,
    see timepoint_billing/asgi_handler.py) and `atexit` (management commands, the grant worker).
    A failure is logged with the count of records it could not write."""
    if not _buffer or not settings.METERING_BACKGROUND_FLUSH:
        return
    try:
        close_old_connections()
        flushed = flush_usage()
        logger.info({"event": "usage_flushed_at_shutdown", "records": flushed})
    except Exception:
        logger.exception("usage flush at shutdown failed: %d records lost", len(_buffer))


atexit.register(usage_flush_at_shutdown)


# --- Roll-ups (idempotent: a day or month is recomputed from records, never incremented)


def _percentile(sorted_values: list[float], quantile: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(quantile * len(sorted_values)))
    return round(sorted_values[rank - 1], 3)


def _aggregate_rows(start: datetime, end: datetime) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "errors": 0, "credits_spent": 0, "times": []}
    )
    records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).values_list(
        "user_id", "api_key_id", "endpoint", "method", "status", "credits_spent", "response_time_ms"
    )
    for user_id, key_id, endpoint, method, status, credits, elapsed in records.iterator(
        chunk_size=5000
    ):
        group = groups[(user_id, key_id, endpoint, method)]
        group["requests"] += 1
        group["errors"] += status >= 400
        group["credits_spent"] += credits
        group["times"].append(elapsed)
    rows = []
    for (user_id, key_id, endpoint, method), group in groups.items():
        times = sorted(group["times"])
        rows.append(
            {
                "user_id": user_id,
                "api_key_id": key_id,
                "endpoint": endpoint,
                "method": method,
                "requests": group["requests"],
                "errors": group["errors"],
                "credits_spent": group["credits_spent"],
                "p50_ms": _percentile(times, 0.50),
                "p95_ms": _percentile(times, 0.95),
            }
        )
    return rows


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(first: date) -> date:
    return (first + timedelta(days=32)).replace(day=1)


@transaction.atomic
def usage_rollup_day(*, day: date) -> int:
    """Recompute the daily aggregates of one UTC day from its records; returns rows written."""
    rows = _aggregate_rows(*_day_bounds(day))
    UsageDaily.objects.filter(day=day).delete()
    UsageDaily.objects.bulk_create([UsageDaily(day=day, **row) for row in rows])
    return len(rows)


@transaction.atomic
def usage_rollup_month(*, month: date) -> int:
    """Recompute the monthly aggregates of the month starting at `month` (percentiles need the
    records, so this reads them rather than summing days)."""
    first = month_start(month)
    start = datetime.combine(first, time.min, tzinfo=UTC)
    end = datetime.combine(_next_month(first), time.min, tzinfo=UTC)
    rows = _aggregate_rows(start, end)
    UsageMonthly.objects.filter(month=first).delete()
    UsageMonthly.objects.bulk_create([UsageMonthly(month=first, **row) for row in rows])
    return len(rows)


def usage_rollup(*, days: list[date]) -> dict[str, int]:
    """Roll up the given days and the months they fall in. Safe to re-run at any time."""
    written = {"daily_rows": 0, "monthly_rows": 0}
    for day in sorted(set(days)):
        written["daily_rows"] += usage_rollup_day(day=day)
    for month in sorted({month_start(day) for day in days}):
        written["monthly_rows"] += usage_rollup_month(month=month)
    return written


ROLLUP_LOCK_KEY = "metering:rollup-lock"


def usage_rollup_recent() -> dict[str, int] | None:
    """Roll up today and yesterday (UTC) and their months: what the background worker runs every
    METERING_ROLLUP_INTERVAL_SECONDS so the usage endpoints and dashboards stay fresh. One process
    at a time (a cache lock; with Redis, across machines); returns None when another holds it."""
    if not cache.add(ROLLUP_LOCK_KEY, 1, timeout=300):
        return None
    try:
        today = timezone.now().date()
        return usage_rollup(days=[today - timedelta(days=1), today])
    finally:
        cache.delete(ROLLUP_LOCK_KEY)
