"""Django's ASGI handler without a new thread per request on the relay's async routes (issue 9).

Django wraps every request in asgiref's `ThreadSensitiveContext`, which gives the request its own
single-thread executor: the first thread-sensitive hop of the request (the `request_started`
signal, the response's `close()`) *starts a new thread*, and it is joined when the request ends.
That was the largest cost left on the relay path after the middleware. The relay's views are
async and do their database work through `run_db` (its own pool), so for their routes the context
is not needed: their few thread-sensitive hops go to asgiref's one shared thread, as they did
before Django 3.1. Every other route (DRF's sync views, admin, portal) keeps Django's behaviour.
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler

# The relay's async routes (relay/urls.py) and the async health checks. A sync view added under
# one of these prefixes would still work; it would share one thread with the others.
ASYNC_ROUTE_PREFIXES = (
    "/api/v1/browse",
    "/api/v1/moments",
    "/api/v1/today",
    "/api/v1/random",
    "/api/v1/search",
    "/api/v1/graph/",
    "/api/v1/stats",
    "/api/v1/credits/",
    "/api/v1/generate",
    "/api/v1/timepoints/",
    "/health",
)


class GatewayASGIHandler(ASGIHandler):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(ASYNC_ROUTE_PREFIXES):
            await self.handle(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
