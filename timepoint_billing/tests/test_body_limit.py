"""The body limit as the ASGI app enforces it: a 10 MB body is refused while it arrives, not after
Django has buffered all of it. Driven through the production ASGI application itself, with a
client that hands it the body in 64 KiB messages and counts what was taken."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from timepoint_billing.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

TEN_MB = 10 * 1024 * 1024
CHUNK = 64 * 1024


class AsgiClient:
    """One HTTP request against the ASGI app: the body in CHUNK-sized messages."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sent = 0  # body bytes the app asked for
        self.finished = False
        self.messages: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.finished:
            await asyncio.sleep(3600)  # the client waits for the response; never disconnects
        chunk = self.body[self.sent : self.sent + CHUNK]
        self.sent += len(chunk)
        self.finished = self.sent >= len(self.body)
        await asyncio.sleep(0)
        return {"type": "http.request", "body": chunk, "more_body": not self.finished}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        asyncio.run(asyncio.wait_for(application(scope, self.receive, self.send), timeout=30))
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        parts = [m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"]
        return start["status"], dict(start["headers"]), b"".join(parts)


def _json(content_length: int | None = None, **extra: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    headers += [(name.replace("_", "-").encode(), value) for name, value in extra.items()]
    return headers


def _assert_413(status: int, headers: dict[bytes, bytes], body: bytes) -> None:
    assert status == 413
    assert headers[b"Content-Type"].startswith(b"application/json")
    payload = json.loads(body)
    assert set(payload) == {"detail", "code"} and payload["code"] == "payload_too_large"
    assert headers[b"X-Request-ID"]


@pytest.mark.parametrize("path", ["/api/v1/keys", "/api/v1/generate"])  # DRF, relay fast path
def test_declared_oversized_body_is_refused_before_any_of_it_is_read(path: str) -> None:
    client = AsgiClient(b"x" * TEN_MB)
    status, headers, body = client.request("POST", path, _json(content_length=TEN_MB))
    _assert_413(status, headers, body)
    assert client.sent == 0


@pytest.mark.parametrize("path", ["/api/v1/keys", "/api/v1/generate"])
def test_chunked_body_stops_being_read_once_past_the_limit(path: str, settings: Any) -> None:
    client = AsgiClient(b"x" * TEN_MB)
    status, headers, body = client.request("POST", path, _json(transfer_encoding=b"chunked"))
    _assert_413(status, headers, body)
    assert client.sent <= settings.MAX_REQUEST_BODY_BYTES + CHUNK


def test_a_body_within_the_limit_arrives_whole(auth_headers: dict[str, str]) -> None:
    name = "k" * 90
    padding = " " * (CHUNK * 3)  # several messages, still far under the limit
    raw = json.dumps({"name": name}).encode() + padding.encode()
    client = AsgiClient(raw)
    token = auth_headers["HTTP_AUTHORIZATION"].encode()
    status, _, body = client.request(
        "POST", "/api/v1/keys", _json(content_length=len(raw), authorization=token)
    )
    assert status == 201, body
    assert json.loads(body)["name"] == name
    assert client.sent == len(raw)


def test_relay_fast_path_still_answers() -> None:
    client = AsgiClient(b"")
    status, _, body = client.request("GET", "/health", [])
    assert status == 200 and json.loads(body)["status"] == "healthy"
