"""Running ORM work from async views.

`sync_to_async(thread_sensitive=False)` runs on the loop's thread pool, where Django's
request-end cleanup never runs: a connection opened there would live forever, and after a
PostgreSQL restart it would fail every request that lands on that thread. `run_db` gives those
threads the same hygiene as a request (close expired or broken connections before and after).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection
from django.db.models import Field, Model

P = ParamSpec("P")
R = TypeVar("R")


def _with_fresh_connection(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


async def run_db(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a sync function that touches the database without blocking the event loop."""
    return await sync_to_async(_with_fresh_connection, thread_sensitive=False)(fn, *args, **kwargs)


# --- One row in, without the ORM's query compilation


@functools.cache
def _insert_sql(model: type[Model], ignore_conflicts: bool) -> tuple[str, tuple[Field, ...]]:
    fields = tuple(field for field in model._meta.concrete_fields if not field.primary_key)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    values = ", ".join(["%s"] * len(fields))
    # Identifiers come from the model's own metadata; every value is a bound parameter.
    sql = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ({values})"  # noqa: S608
    return (sql + " ON CONFLICT DO NOTHING" if ignore_conflicts else sql), fields


def row_insert(model: type[Model], *, ignore_conflicts: bool = False, **values: Any) -> None:
    """INSERT one row of `model` (fields not given take their defaults), each value prepared by
    its field as the ORM would; `ignore_conflicts`: a row breaking a unique constraint is
    skipped (PostgreSQL and SQLite). For the few inserts every request makes: the ORM compiles
    each `create`/`bulk_create` anew, ~250 µs of CPU, about ten times the statement's own cost
    (issue 17). No signals are sent and nothing is returned."""
    sql, fields = _insert_sql(model, ignore_conflicts)
    params = [
        field.get_db_prep_save(
            values[field.attname] if field.attname in values else field.get_default(), connection
        )
        for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
