"""The relay's routes do not send Django's request signals (asgi_handler.py `handle_on_loop`):
safe only while every receiver connected to them has nothing to do for those routes. A new
receiver must be looked at, and this list updated with the reason."""

from __future__ import annotations

from django.core import signals
from django.dispatch import Signal

import timepoint_billing.asgi  # the application as production loads it
from timepoint_billing.asgi_handler import YOUNG_GC_THRESHOLD, GatewayASGIHandler

# Receivers known to have nothing to do for the relay's routes (see `handle_on_loop`).
KNOWN = {
    "request_started": {
        "django.db.reset_queries",
        "django.db.close_old_connections",
    },
    "request_finished": {
        "django.db.close_old_connections",
        "django.core.cache.close_caches",
        "django.core.handlers.base.reset_urlconf",
    },
}


def _names(signal: Signal) -> set[str]:
    sync_receivers, async_receivers = signal._live_receivers(GatewayASGIHandler)
    return {f"{f.__module__}.{f.__qualname__}" for f in [*sync_receivers, *async_receivers]}


def test_request_signal_receivers_are_known() -> None:
    assert _names(signals.request_started) == KNOWN["request_started"]
    assert _names(signals.request_finished) == KNOWN["request_finished"]


def test_the_startup_heap_is_frozen_out_of_the_garbage_collectors_passes() -> None:
    """A full collection traversed every object the worker built at startup (~190 000; timed at
    240-270 ms on this machine class, a pause for every request in flight). The lifespan startup
    freezes them, the URL conf's view modules included."""
    import asyncio
    import gc

    messages = [{"type": "lifespan.startup"}]
    sent: list[dict[str, str]] = []
    started = asyncio.Event()

    async def receive() -> dict[str, str]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # no shutdown: the test stops the lifespan itself
        raise AssertionError("unreachable")

    async def send(message: dict[str, str]) -> None:
        sent.append(message)
        started.set()

    async def run() -> None:
        lifespan = asyncio.ensure_future(timepoint_billing.asgi.application(
            {"type": "lifespan"}, receive, send
        ))  # fmt: skip
        await started.wait()
        lifespan.cancel()

    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        asyncio.run(run())
        assert sent == [{"type": "lifespan.startup.complete"}]
        assert gc.get_freeze_count() > 50_000
        # And the young generation is collected every 10 000 allocations, not every 700.
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
