"""Running ORM work from async views.

`sync_to_async(thread_sensitive=False)` runs on the loop's thread pool, where Django's
request-end cleanup never runs: a connection opened there would live forever, and after a
PostgreSQL restart it would fail every request that lands on that thread. `run_db` gives those
threads the same hygiene as a request (close expired or broken connections before and after).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

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
