"""Only documented fields leave the gateway (issue 14, point 4).

The Flash and Clockchain contract peers are told to add fields no contract has (`owner_id`,
`internal_score`, `private_flag`) to every object of every answer and stream event, as an
upstream release might tomorrow. Every route of the relay's route table is called through the
running gateway: none of those fields comes out, and every object of every answer has only
the keys its route documents in the OpenAPI schema. A route added to `relay/urls.py` without a
call here fails the test, so it cannot go unchecked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from devpeers._asgi import UNKNOWN_FIELDS
from devpeers.clockchain import CAESAR, MONTHS

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"
# Routes that only ever answer an error (a bad path parameter): nothing of an upstream's in them.
ERROR_ONLY_ROUTES = {"relay-invalid-path"}


@dataclass
class World:
    gateway: httpx.Client
    auth: dict[str, str]
    flash_peer: Any
    clockchain_peer: Any
    user: Any
    mine: str  # a completed private timepoint of the caller's, with an image
    slug: str


def _stream(world: World) -> httpx.Response:
    body = {"query": "Apollo 11 lands on the Moon", "generate_image": True}
    with world.gateway.stream("POST", f"{API}/generate/stream", json=body, headers=world.auth) as r:
        r.read()
    return r


def _generate_async(world: World) -> list[httpx.Response]:
    started = world.gateway.post(
        f"{API}/generate/async", json={"query": "Rome"}, headers=world.auth
    )
    poll = world.gateway.get(started.json()["poll_url"], headers=world.auth)
    return [started, poll]


def _history(world: World) -> list[httpx.Response]:
    # A charge first, so the ledger has rows (a new account's history is empty).
    generated = world.gateway.post(f"{API}/generate", json={"query": "Rome"}, headers=world.auth)
    return [generated, world.gateway.get(f"{API}/credits/history", headers=world.auth)]


def _delete(world: World) -> httpx.Response:
    doomed = world.flash_peer.add_timepoint(world.user.flash_user_id, query="To be deleted")
    return world.gateway.delete(f"{API}/timepoints/{doomed}", headers=world.auth)


def _reconcile(world: World) -> httpx.Response:
    world.user.is_staff = True
    world.user.save()
    return world.gateway.get(f"{API}/staff/credits/reconcile/{world.user.pk}", headers=world.auth)


def _get(url: str) -> Callable[[World], httpx.Response]:
    return lambda world: world.gateway.get(url.format(w=world), headers=world.auth)


# One call per route and method (and the calls it needs first), each answering 2xx with objects
# at every level.
CALLS: dict[tuple[str, str], Callable[[World], httpx.Response | list[httpx.Response]]] = {
    ("relay-credits-balance", "GET"): _get(f"{API}/credits/balance"),
    ("relay-credits-history", "GET"): _history,
    ("relay-credits-costs", "GET"): _get(f"{API}/credits/costs"),
    ("relay-generate", "POST"): lambda world: world.gateway.post(
        f"{API}/generate", json={"query": "Apollo 11", "generate_image": True}, headers=world.auth
    ),
    ("relay-generate-stream", "POST"): _stream,
    ("relay-generate-async", "POST"): _generate_async,
    ("relay-timepoint-list-mine", "GET"): _get(f"{API}/timepoints/mine"),
    ("relay-timepoint-by-slug", "GET"): _get(API + "/timepoints/slug/{w.slug}?full=true"),
    ("relay-timepoint-characters", "GET"): _get(API + "/timepoints/{w.mine}/characters"),
    ("relay-timepoint-visibility", "PATCH"): lambda world: world.gateway.patch(
        f"{API}/timepoints/{world.mine}/visibility",
        json={"visibility": "private"},
        headers=world.auth,
    ),
    ("relay-timepoint-detail", "GET"): lambda world: [
        world.gateway.get(f"{API}/timepoints/{world.mine}", headers=world.auth),
        world.gateway.get(
            f"{API}/timepoints/{world.mine}?full=true&include_image=true", headers=world.auth
        ),
    ],
    ("relay-timepoint-detail", "DELETE"): _delete,
    ("relay-moment-list", "GET"): _get(f"{API}/moments?limit=100"),
    ("relay-moment-detail", "GET"): _get(f"{API}/moments{CAESAR}"),
    ("relay-browse", "GET"): _get(f"{API}/browse"),
    ("relay-browse-path", "GET"): _get(f"{API}/browse/-44/march"),
    ("relay-today", "GET"): _get(f"{API}/today"),
    ("relay-random", "GET"): _get(f"{API}/random"),
    ("relay-search", "GET"): _get(f"{API}/search?q=caesar"),
    ("relay-neighbors", "GET"): _get(f"{API}/graph/neighbors{CAESAR}"),
    ("relay-stats", "GET"): _get(f"{API}/stats"),
    ("relay-credits-reconcile", "GET"): _reconcile,
}


def _routes() -> Iterator[tuple[str, str]]:
    """(URL name, method) of every documented route of the relay's URL table."""
    from relay.urls import urlpatterns

    for pattern in urlpatterns:
        schema_view = getattr(pattern.callback, "cls", None)
        if schema_view is None:
            assert pattern.name in ERROR_ONLY_ROUTES, f"{pattern.name} is not documented"
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            if method in vars(schema_view):
                yield str(pattern.name), method.upper()


def _openapi_path(url_path: str) -> str:
    """The OpenAPI path of the route that answered `url_path` (`<path:id>` → `{id}`)."""
    from django.urls import resolve

    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", resolve(url_path).route)


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in spec:
        spec = schema["components"]["schemas"][spec["$ref"].rsplit("/", 1)[-1]]
    return spec


def _undocumented(schema: dict[str, Any], spec: dict[str, Any], value: Any, at: str) -> list[str]:
    """Where `value` holds a key its schema `spec` does not document (free-form objects, those
    without `properties`, are the schema's to leave open)."""
    spec = _resolve(schema, spec)
    if "oneOf" in spec:  # a stream event: the variant its `event` discriminator names
        mapping = spec["discriminator"]["mapping"]
        if not isinstance(value, dict) or value.get("event") not in mapping:
            return [f"{at}: event {value!r} is not documented"]
        return _undocumented(schema, {"$ref": mapping[value["event"]]}, value, at)
    if isinstance(value, list) and "items" in spec:
        found: list[str] = []
        for index, item in enumerate(value):
            found += _undocumented(schema, spec["items"], item, f"{at}[{index}]")
        return found
    if isinstance(value, dict) and "properties" in spec:
        found = [f"{at}.{key}" for key in value if key not in spec["properties"]]
        for key, item in value.items():
            if key in spec["properties"]:
                found += _undocumented(schema, spec["properties"][key], item, f"{at}.{key}")
        return found
    return []


def _answers(response: httpx.Response) -> list[Any]:
    """The JSON values of an answer: its body, or each event of a stream."""
    if response.headers["content-type"].startswith("text/event-stream"):
        return [
            json.loads(block.removeprefix("data: "))
            for block in response.text.split("\n\n")
            if block.startswith("data: ")
        ]
    return [response.json()]


@pytest.fixture
def world(
    gateway: httpx.Client, auth: dict[str, str], flash_peer: Any, clockchain_peer: Any, user: Any
) -> World:
    mine = flash_peer.add_timepoint(user.flash_user_id, "private", generate_image=True)
    today = datetime.now(UTC)
    clockchain_peer.add_node(
        f"/{today.year}/{MONTHS[today.month - 1]}/{today.day}/1200/france/ile-de-france/paris/"
        "a-public-moment-of-today",
        one_liner="Dated today, so /today has an event.",
    )
    flash_peer.unknown_fields = clockchain_peer.unknown_fields = True
    slug = flash_peer.timepoint(mine)["slug"]
    return World(gateway, auth, flash_peer, clockchain_peer, user, mine, slug)


def test_no_undocumented_field_leaves_the_gateway_on_any_route(world: World) -> None:
    routes = list(_routes())
    assert set(routes) == set(CALLS), "every route (and method) of relay/urls.py needs a call"
    schema = world.gateway.get("/api/schema", headers={"Accept": "application/json"}).json()
    leaks: list[str] = []
    for route in routes:
        result = CALLS[route](world)
        for response in result if isinstance(result, list) else [result]:
            method, path = response.request.method, response.request.url.path
            where = f"{method} {path}"
            assert response.status_code in (200, 202), f"{where}: {response.text[:300]}"
            leaks += [f"{where}: {field}" for field in UNKNOWN_FIELDS if field in response.text]
            documented = schema["paths"][_openapi_path(path)][method.lower()]["responses"]
            content = documented[str(response.status_code)]["content"]
            media_type = response.headers["content-type"].split(";")[0]
            for value in _answers(response):
                leaks += [
                    f"{where}: {key} is not documented"
                    for key in _undocumented(schema, content[media_type]["schema"], value, "")
                ]
    assert not leaks, "\n".join(leaks)
