"""The project's URL areas, declared once. `timepoint_billing/urls.py` mounts every app under
them; the middleware (which paths are the JSON API), the error handler (which paths are browser
pages) and the ASGI handler (which paths are async views) derive their path prefixes from here
and from the URL conf itself, so a route added to an app's `urls.py` needs no other edit."""

from __future__ import annotations

import functools

from asgiref.sync import iscoroutinefunction
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern

API_V1 = "api/v1/"
INTERNAL = "internal/"
HEALTH = "health"
ADMIN = "admin/"
PORTAL = "portal/"
OIDC = "oidc/"

# Bearer-authenticated JSON: no session, no login cookie, no CSRF (timepoint_billing/middleware.py).
JSON_API_PREFIXES = ("/" + API_V1, "/" + HEALTH, "/" + INTERNAL)
# The browser pages; every other path answers errors as `{"detail", "code"}` JSON. The admin and
# the portal without their slash too (`/admin` is redirected to `/admin/` as a page).
BROWSER_PREFIXES = ("/" + ADMIN.rstrip("/"), "/" + PORTAL.rstrip("/"), "/" + OIDC)


class LazyURLResolver(URLResolver):
    """An include whose URL conf (a module name, or an object with `urlpatterns`) is read when a
    path under it is first resolved or a name in it reversed (timepoint_billing/urls.py
    `lazily`). It holds no async view (test_worker_imports checks): the walks over the URL conf
    that find those skip it, so that a worker does not load it at startup."""


def _literal_start(route: str) -> str:
    """The fixed start of a `path()` route, up to its first `<converter:name>`."""
    return route.split("<", 1)[0]


def _async_view_prefixes(patterns: list[URLPattern | URLResolver], base: str) -> set[str]:
    found: set[str] = set()
    for entry in patterns:
        if not isinstance(entry.pattern, RoutePattern):
            # A regular expression (the relay's catch-all for bad path parameters) only matches
            # below prefixes its `path()` routes already give.
            continue
        start = base + _literal_start(str(entry.pattern))
        if isinstance(entry, LazyURLResolver):
            # An include loaded on first use (timepoint_billing/urls.py `lazily`): it holds no
            # async view (test_routes checks), and walking it would load it in every worker.
            continue
        if isinstance(entry, URLResolver):
            found |= _async_view_prefixes(entry.url_patterns, start)
        elif iscoroutinefunction(entry.callback) and start:
            found.add("/" + start)
    return found


@functools.cache
def async_route_prefixes() -> tuple[str, ...]:
    """The fixed start of every async view's route in the URL conf (the relay's routes and the
    health checks), read from the URL conf once per process; a start another one covers is left
    out (fewer comparisons on the hot path)."""
    found = _async_view_prefixes(get_resolver().url_patterns, "")
    return tuple(sorted(p for p in found if not any(p != q and p.startswith(q) for q in found)))
