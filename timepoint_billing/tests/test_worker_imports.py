"""What a gateway worker loads (issue 17, memory per worker): the relay's routes and what Django
needs for every model, not the libraries and views only other routes use. Checked in a fresh
process started as a worker starts (timepoint_billing.asgi), since this test process has
imported everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern

from timepoint_billing.routes import async_route_prefixes
from timepoint_billing.tests.test_foundation import ROOT

# Loaded on first use, never at a worker's start: each is the module (or the library) that the
# routes, tokens or purchases named beside it need.
LOADED_ON_FIRST_USE = [
    "cryptography.hazmat",  # Auth0 JWTs (PyJWT), Apple purchases, webhook secrets (Fernet)
    "jwt",
    "appstoreserverlibrary",
    "OpenSSL",
    "portal.views",  # the portal's pages
    "accounts.api",  # the account, key, payment, usage, webhook and alert APIs
    "payments.api",
    "internal.api",  # the internal API
    "drf_spectacular.views",  # /api/schema, /api/docs, /api/redoc
    "mozilla_django_oidc.views",  # the browser sign-in
    "accounts.admin",  # the admin (timepoint_billing/admin_apps.py)
    "payments.admin",
    "djstripe.admin",
]

_PROBE = """
import json, os, sys
import timepoint_billing.asgi  # what the worker class loads: Django set up, the handler built
from django.urls import get_resolver, resolve
from timepoint_billing.routes import async_route_prefixes
get_resolver().url_patterns  # as the lifespan startup does before freezing the heap
timepoint_billing.asgi.application.lane  # and the relay's lane (timepoint_billing/relay_lane.py)
async_route_prefixes()
resolve("/api/v1/browse")
loaded = sorted(set(sys.modules) & set(json.loads(os.environ["PROBE_MODULES"])))
from django.contrib import admin
from django.urls import reverse
before = len(admin.site._registry)
resolve("/admin/")  # the admin's first use: every app's ModelAdmins registered
changelist = reverse("admin:apikeys_apikey_changelist")
print(json.dumps({"loaded": loaded, "admin": [before, len(admin.site._registry), changelist]}))
"""


def _worker_probe(names: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PROBE_MODULES=json.dumps(names))
    env.pop("DJANGO_SETTINGS_MODULE", None)  # asgi.py sets it, as in production
    answer = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert answer.returncode == 0, answer.stderr
    return dict(json.loads(answer.stdout.strip().splitlines()[-1]))


def test_a_worker_starts_without_what_only_other_routes_use() -> None:
    names = LOADED_ON_FIRST_USE + (["fakeredis"] if os.environ.get("REDIS_URL") else [])
    probe = _worker_probe(names)
    assert probe["loaded"] == []
    # The admin, discovered on first use: nothing registered before, every app's models after.
    registered_before, registered_after, changelist = probe["admin"]
    assert registered_before == 0
    assert registered_after > 20
    assert changelist == "/admin/apikeys/apikey/"


def _async_views(patterns: list[URLPattern | URLResolver], base: str) -> list[str]:
    """The route of every async view, every include loaded (Django's resolver loads a lazy one
    when its `url_patterns` is read)."""
    found = []
    for entry in patterns:
        start = base + (str(entry.pattern) if isinstance(entry.pattern, RoutePattern) else "")
        if isinstance(entry, URLResolver):
            found += _async_views(entry.url_patterns, start)
        elif isinstance(entry.pattern, RoutePattern) and iscoroutinefunction(entry.callback):
            # (A regular expression, the relay's catch-all for bad path parameters, matches
            # only below its `path()` routes: routes.py leaves those out as well.)
            found.append("/" + start)
    return found


def test_every_async_view_is_under_a_prefix_the_handler_serves_on_the_loop() -> None:
    """The includes loaded on first use are left out of `async_route_prefixes` (walking them
    would load them): none of them may hold an async view, or it would lose the handler's
    thread-free path."""
    routes = _async_views(get_resolver().url_patterns, "")
    assert routes
    prefixes = async_route_prefixes()
    assert [route for route in routes if not route.startswith(prefixes)] == []
