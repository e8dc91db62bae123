"""The relay's routes send Django's request signals on the event loop (asgi_handler.py): safe only
while every receiver connected to them does no I/O there. A new receiver must be looked at."""

from __future__ import annotations

from django.core import signals
from django.dispatch import Signal

import timepoint_billing.asgi  # noqa: F401  (the application as production loads it)
from timepoint_billing.asgi_handler import GatewayASGIHandler

# Receivers known to do no I/O on the event loop's thread (see `handle_on_loop`).
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
