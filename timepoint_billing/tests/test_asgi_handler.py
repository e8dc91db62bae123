"""The relay's routes do not send Django's request signals (asgi_handler.py `handle_on_loop`):
safe only while every receiver connected to them has nothing to do for those routes. A new
receiver must be looked at, and this list updated with the reason."""

from __future__ import annotations

from django.core import signals
from django.dispatch import Signal

import timepoint_billing.asgi  # noqa: F401  (the application as production loads it)
from timepoint_billing.asgi_handler import GatewayASGIHandler

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
