"""The OpenAPI document: it validates, documents every `/api/v1/` route, and the docs pages load
nothing from outside this server (no CDN, no web fonts)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admindocs.utils import replace_named_groups, replace_unnamed_groups
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, include, path, re_path
from django.urls.resolvers import RegexPattern
from drf_spectacular.validation import validate_schema

API_PREFIX = "/api/v1/"


def _pattern_text(pattern: Any) -> str | None:
    """The route text of one URL pattern, or None for a regex catch-all (alternations or
    wildcards, e.g. the relay's bad-path fallback): those name no route of their own."""
    text = str(pattern.pattern)
    if isinstance(pattern.pattern, RegexPattern):
        text = replace_unnamed_groups(replace_named_groups(text))
        text = text.removeprefix("^").removesuffix(r"\Z").removesuffix("$")
        if re.search(r"[()|*+?\[\]\\]|\.", text):
            return None
    return text


def url_paths(resolver: URLResolver | None = None, prefix: str = "/") -> set[str]:
    """Every concrete path in the URL conf, `<int:key_id>` written as OpenAPI's `{key_id}`."""
    resolver = resolver or get_resolver()
    found: set[str] = set()
    for entry in resolver.url_patterns:
        own = _pattern_text(entry)
        if own is None:
            continue
        text = prefix + own
        if isinstance(entry, URLResolver):
            found |= url_paths(entry, text)
        elif isinstance(entry, URLPattern):
            found.add(re.sub(r"<(?:[^>:]+:)?([^>]+)>", r"{\1}", text))
    return found


@pytest.fixture
def schema(db: Any) -> dict[str, Any]:
    response = Client().get("/api/schema", {"format": "json"})
    assert response.status_code == 200
    return dict(response.json())


def test_schema_validates_against_the_openapi_spec(schema: dict[str, Any]) -> None:
    validate_schema(schema)
    assert schema["info"]["title"] == "TIMEPOINT API"
    assert "Getting started" in schema["info"]["description"]
    # The spend controls on keys, and where each operation's scope is named.
    for words in ("x-required-scope", "scope_required", "budget_exhausted", "key_not_allowed_here"):
        assert words in schema["info"]["description"], words


def test_every_api_v1_route_is_documented(schema: dict[str, Any]) -> None:
    routes = {path for path in url_paths() if path.startswith(API_PREFIX)}
    assert routes, "no /api/v1/ routes in the URL conf"
    missing = sorted(routes - set(schema["paths"]))
    assert not missing, f"routes missing from /api/schema: {missing}"


def _view(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


def test_url_walker_reads_route_and_regex_patterns() -> None:
    patterns: list[URLPattern | URLResolver] = [
        path("api/v1/", include([path("keys/<int:key_id>/roll", _view)])),
        re_path(r"^api/v1/scenes/(?P<scene_id>[0-9a-f-]+)$", _view),
        re_path(r"^api/v1/(?:moments|browse)/(?s:.*)\Z", _view),  # a catch-all: no route
    ]
    resolver = URLResolver(RegexPattern(r"^/"), patterns)
    assert url_paths(resolver, "/") == {
        "/api/v1/keys/{key_id}/roll",
        "/api/v1/scenes/{scene_id}",
    }


@pytest.mark.parametrize("url", ["/api/docs", "/api/redoc"])
def test_docs_pages_load_nothing_from_outside(url: str, db: Any) -> None:
    response = Client().get(url)
    assert response.status_code == 200
    html = response.content.decode()
    external = re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']+""", html)
    assert external == [], f"{url} loads {external}"
    assert "fonts.googleapis" not in html and "@import" not in html


def test_docs_assets_have_no_external_fonts(db: Any) -> None:
    """Swagger UI's and Redoc's bundles (served from drf-spectacular-sidecar) fetch no fonts."""
    from django.contrib.staticfiles import finders

    for asset in (
        "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
        "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js",
    ):
        found = finders.find(asset)
        assert found, asset
        with open(found, encoding="utf-8") as handle:
            text = handle.read()
        assert "fonts.googleapis.com" not in text, asset
        assert "fonts.gstatic.com" not in text, asset
