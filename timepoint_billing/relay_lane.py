"""The async routes (the relay's allow-list and the health checks) served without Django's
per-request machinery, with every behaviour the middleware stack gives them (issue 17).

Django runs a request through thirteen middleware layers, each wrapped in an exception converter
and awaited in turn, then resolves the URL against the whole URL conf, looks for view middleware,
checks whether the view should be atomic, and hops to a thread to log a 4xx. On the relay's path
most of those layers do nothing (sessions, CSRF, login, messages, static files and axes skip the
JSON API) and the rest are a few header writes; together they were ~28 % of a worker's CPU under
load (py-spy). The lane calls the same hooks of the same middleware classes, in the stack's order,
as plain calls:

    request id, body limit (RequestContext) → caller separation (internal) → CORS preflight →
    SSL redirect (Security) → user agents, redirects (Common) → view
    → X-Frame-Options → Content-Length (Common) → security headers → CORS headers → log line

An early answer skips the hooks below it and gets the ones above it on the way out, and an
exception becomes the answer at the layer it was raised in, as in Django's stack. Only the
stack in `LANE_MIDDLEWARE` is reproduced: with any other `MIDDLEWARE` setting the lane is off and
Django serves everything (a new middleware must be added here, and its hooks called, to be kept
on the relay's path; `test_relay_lane` fails until it is).
"""

from __future__ import annotations

import time
from typing import Any

from asgiref.sync import iscoroutinefunction
from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest, HttpResponse
from django.middleware import clickjacking, common, security
from django.urls import Resolver404, ResolverMatch, URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern
from django.utils.log import log_response

from internal.middleware import separation_answer
from timepoint_billing.errors import exception_to_response
from timepoint_billing.middleware import request_finish, request_start
from timepoint_billing.routes import LazyURLResolver, async_route_prefixes

# The stack the lane reproduces (settings.MIDDLEWARE). Sessions, CSRF, authentication and
# messages skip the JSON API (`BrowserOnlyMixin`); WhiteNoise answers only under STATIC_URL; axes
# acts only on a request its login signal handlers marked as locked out; ApiErrorMiddleware turns
# a view's exception into JSON (here: `exception_to_response`).
LANE_MIDDLEWARE = (
    "timepoint_billing.middleware.RequestContextMiddleware",
    "internal.middleware.CallerSeparationMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "timepoint_billing.middleware.SecurityMiddleware",
    "timepoint_billing.middleware.StaticFilesMiddleware",
    "timepoint_billing.middleware.SessionMiddleware",
    "timepoint_billing.middleware.CommonMiddleware",
    "timepoint_billing.middleware.CsrfViewMiddleware",
    "timepoint_billing.middleware.AuthenticationMiddleware",
    "timepoint_billing.middleware.MessageMiddleware",
    "timepoint_billing.middleware.XFrameOptionsMiddleware",
    "timepoint_billing.errors.ApiErrorMiddleware",
    "axes.middleware.AxesMiddleware",
)

View = Any
Route = tuple[View, dict[str, Any], ResolverMatch]


def _unused(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never called
    raise AssertionError("the lane calls the middleware's hooks, never its get_response")


def _async_views(
    patterns: list[URLPattern | URLResolver], base: str
) -> list[tuple[str, URLPattern]]:
    found: list[tuple[str, URLPattern]] = []
    for entry in patterns:
        if not isinstance(entry.pattern, RoutePattern):
            continue
        route = base + str(entry.pattern)
        if isinstance(entry, LazyURLResolver):
            continue  # loaded on first use, holds no async view
        if isinstance(entry, URLResolver):
            found += _async_views(entry.url_patterns, route)
        elif iscoroutinefunction(entry.callback):
            found.append((route, entry))
    return found


class RelayLane:
    """Built once per worker, after Django is set up (the handler's first async request)."""

    def __init__(self) -> None:
        self.prefixes = async_route_prefixes()
        resolver = get_resolver()
        # Routes without a path parameter are found by a dict lookup; each entry is what
        # Django's resolver answers for that path (checked here, so an earlier pattern matching
        # the same path wins as it does in Django).
        self.exact: dict[str, Route] = {}
        for route, pattern in _async_views(resolver.url_patterns, ""):
            if "<" in route:
                continue
            path = "/" + route
            match = resolver.resolve(path)
            if match.func is pattern.callback:
                self.exact[path] = (match.func, match.kwargs, match)
        self.cors = CorsMiddleware(_unused)
        self.security = security.SecurityMiddleware(_unused)
        self.common = common.CommonMiddleware(_unused)
        self.xframe = clickjacking.XFrameOptionsMiddleware(_unused)

    @staticmethod
    def applies() -> bool:
        """The lane reproduces this stack only; static files must not live under its paths."""
        static = str(settings.STATIC_URL or "")
        return tuple(settings.MIDDLEWARE) == LANE_MIDDLEWARE and not (
            static and static.startswith(async_route_prefixes())
        )

    def route(self, path: str) -> Route | None:
        """The async view serving `path` as Django would resolve it, or None (Django serves)."""
        found = self.exact.get(path)
        if found is not None:
            return found
        if not path.startswith(self.prefixes):
            return None
        try:
            match = get_resolver().resolve(path)
        except Resolver404:
            return None
        if not iscoroutinefunction(match.func):
            return None
        return match.func, match.kwargs, match

    async def serve(self, request: HttpRequest, route: Route) -> Any:
        started = time.perf_counter()
        response = request_start(request)
        if response is None:
            response = await self._below_request_context(request, route)
        response = request_finish(request, response, started)
        if response.status_code >= 400:
            # Django's handler logs these from a thread; the logger is a level check (ERROR).
            log_response(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    async def _below_request_context(self, request: HttpRequest, route: Route) -> Any:
        try:
            response: Any = await separation_answer(request)
        except Exception as exc:
            return response_for_exception(request, exc)
        if response is None:
            response = self.cors.check_preflight(request)
            if response is None:
                response = await self._below_cors(request, route)
            self.cors.add_response_headers(request, response)
        return response

    async def _below_cors(self, request: HttpRequest, route: Route) -> Any:
        response: Any = self.security.process_request(request)
        if response is None:
            try:
                response = self.common.process_request(request)
                if response is None:
                    response = await self._view(request, route)
                response = self.common.process_response(request, response)
            except Exception as exc:
                response = response_for_exception(request, exc)
        return self.security.process_response(request, response)

    async def _view(self, request: HttpRequest, route: Route) -> Any:
        view, kwargs, match = route
        request.resolver_match = match
        try:
            response = await view(request, **kwargs)
        except Exception as exc:  # ApiErrorMiddleware: JSON for every path the lane serves
            response = exception_to_response(exc, request)
        return self.xframe.process_response(request, response)
