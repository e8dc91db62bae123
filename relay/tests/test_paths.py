"""Hostile path parameters: 400 `invalid_path` and not a single request at the peers.

Sent over a raw socket to the real ASGI server, so the gateway sees exactly these bytes (an HTTP
client library would normalise dot segments or refuse control characters)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from devpeers.clockchain import CAESAR

pytestmark = pytest.mark.django_db(transaction=True)

UUID = "0b6c3f0e-2f7a-4c1e-9d2a-3c4b5a6f7e80"
HOSTILE = [
    "..",
    ".",
    "a/../b",
    "../../credits/balance",
    "%2e%2e",
    "%2E%2e/x",
    "%252e%252e",
    "%25252e",
    "a%2Fb",
    "a%2fb",
    "a\\b",
    "a%5cb",
    "a;b",
    "a%3Bb",
    "a%00b",
    "a%0d%0ab",
    "a%0Ab",
    "a%3Fb",
    "a%23b",
    "a//b",
    "a/",
    "A" * 3000,
    "caf%C3%A9",
    "%",
]
PREFIXES = [
    ("GET", "/api/v1/moments/"),
    ("GET", "/api/v1/browse/"),
    ("GET", "/api/v1/graph/neighbors/"),
    ("GET", "/api/v1/timepoints/"),
]


def raw_request(url: str, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if method == "PATCH":
        lines += ["Content-Type: application/json", "Content-Length: 25"]
    payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if method == "PATCH":
        payload += b'{"visibility": "public"}\n'
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.fixture
def live_url(_gateway_server: Any, gateway: Any) -> str:
    return str(_gateway_server.url)


@pytest.mark.parametrize(("method", "prefix"), PREFIXES)
def test_hostile_parameters_never_reach_an_upstream(
    live_url: str, auth: Any, flash_peer: Any, clockchain_peer: Any, method: str, prefix: str
) -> None:
    for value in HOSTILE:
        status, body = raw_request(live_url, method, prefix + value, auth)
        assert status == 400, (prefix, value, status, body[:200])
        assert json.loads(body)["code"] == "invalid_path", (prefix, value)
    assert flash_peer.requests == []
    assert clockchain_peer.requests == []


def test_hostile_visibility_ids(live_url: str, auth: Any, flash_peer: Any, user: Any) -> None:
    extra = [UUID + "%2F..", UUID + ";x", UUID + "%252F..", "x" * 3000]
    for value in HOSTILE + extra:
        target = f"/api/v1/timepoints/{value}/visibility"
        status, body = raw_request(live_url, "PATCH", target, auth)
        assert status == 400, (value, status, body[:200])
        assert json.loads(body)["code"] == "invalid_path", value
    for raw in ("a\x00b", "a\tb", "a\x7fb"):
        status, _ = raw_request(live_url, "PATCH", f"/api/v1/timepoints/{raw}/visibility", auth)
        assert status == 400, repr(raw)
    assert flash_peer.requests == []


def test_raw_control_characters_are_refused(
    live_url: str, auth: Any, flash_peer: Any, clockchain_peer: Any
) -> None:
    for _, prefix in PREFIXES:
        for raw in ("a\x00b", "a\tb", "a\x7fb"):
            status, _ = raw_request(live_url, "GET", prefix + raw, auth)
            assert status == 400, repr(prefix + raw)
    assert clockchain_peer.requests == []
    assert flash_peer.requests == []


def test_wellformed_parameters_pass(
    live_url: str, auth: Any, flash_peer: Any, clockchain_peer: Any, user: Any
) -> None:
    status, _ = raw_request(live_url, "GET", "/api/v1/moments" + CAESAR, auth)
    assert status == 200
    status, _ = raw_request(live_url, "GET", f"/api/v1/timepoints/{UUID}", auth)
    assert status == 404  # Flash's own answer: the id was relayed
    assert flash_peer.requests_to(f"/api/v1/timepoints/{UUID}")


def test_upstream_internal_routes_are_unreachable(
    live_url: str, auth: Any, flash_peer: Any, clockchain_peer: Any
) -> None:
    for method, target in [
        ("POST", "/api/v1/credits/admin/grant"),
        ("POST", "/api/v1/users/resolve"),
        ("GET", f"/api/v1/timepoints/{UUID}/tdf"),
        ("POST", f"/api/v1/timepoints/{UUID}/export"),
        ("GET", "/api/v1/jobs/x"),
        ("POST", "/api/v1/moments/a/publish"),
        ("GET", "/api/v1/agents"),
        ("GET", "/mcp"),
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/models"),
    ]:
        status, _ = raw_request(live_url, method, target, auth)
        assert status in (400, 404, 405), (method, target, status)
    assert flash_peer.requests == []
    assert clockchain_peer.requests == []


def test_openapi_documents_every_relay_route(live_url: str, gateway: Any) -> None:
    schema = gateway.get("/api/schema", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert schema.status_code == 200
    document = json.loads(schema.text) if schema.text.lstrip().startswith("{") else None
    if document is None:
        import yaml

        document = yaml.safe_load(schema.text)
    paths = document["paths"]
    expected = {
        ("/api/v1/credits/balance", "get"),
        ("/api/v1/credits/history", "get"),
        ("/api/v1/credits/costs", "get"),
        ("/api/v1/generate", "post"),
        ("/api/v1/generate/stream", "post"),
        ("/api/v1/timepoints/{id}", "get"),
        ("/api/v1/timepoints/{id}/visibility", "patch"),
        ("/api/v1/moments", "get"),
        ("/api/v1/moments/{path}", "get"),
        ("/api/v1/browse", "get"),
        ("/api/v1/browse/{path}", "get"),
        ("/api/v1/today", "get"),
        ("/api/v1/random", "get"),
        ("/api/v1/search", "get"),
        ("/api/v1/graph/neighbors/{path}", "get"),
        ("/api/v1/stats", "get"),
    }
    for path, method in expected:
        operation = paths[path][method]
        assert "200" in operation["responses"], path
        assert {"401", "429"} <= set(operation["responses"]), path
    balance = paths["/api/v1/credits/balance"]["get"]["responses"]["200"]
    assert "content" in balance
    assert (
        "text/event-stream"
        in paths["/api/v1/generate/stream"]["post"]["responses"]["200"]["content"]
    )
