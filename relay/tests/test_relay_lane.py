"""The relay's lane (timepoint_billing/relay_lane.py) answers exactly what Django's middleware
stack answers: the same requests are sent to the running gateway with the lane on and with it
off (Django's handler), and the answers must not differ in status, headers or body."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import timepoint_billing.asgi
from timepoint_billing.relay_lane import RelayLane

# Differ between any two requests: when, which request, how much of the limit is left.
VOLATILE = {"date", "x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit"}


@pytest.fixture
def lane_switch() -> Iterator[Any]:
    handler = timepoint_billing.asgi.application
    lane = handler.lane
    assert lane is not None, "the lane is off under the project's settings"

    def switch(on: bool) -> None:
        handler.lane = lane if on else None

    yield switch
    handler.lane = lane


def _answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE}
    try:
        body: Any = response.json()
    except ValueError:
        body = response.content
    if isinstance(body, dict):
        body.pop("request_id", None)
    return response.status_code, headers, body


def test_the_lane_is_on_for_the_projects_middleware() -> None:
    """A middleware added to settings.MIDDLEWARE turns the lane off (Django serves the relay
    again, slower) until the lane calls its hooks too: this fails to say so."""
    assert RelayLane.applies()


def test_the_lane_answers_as_the_middleware_stack_does(
    gateway: httpx.Client, lane_switch: Any, user: Any, make_key: Any, settings: Any
) -> None:
    _, raw = make_key(user)
    key = {"Authorization": f"Bearer {raw}"}
    origin = {"Origin": "https://app.timepointai.com"}
    requests: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", "/api/v1/browse", key, None),
        ("GET", "/api/v1/browse/1969", {**key, **origin}, None),
        ("GET", "/api/v1/stats", {**key, "Origin": "https://evil.example"}, None),
        ("GET", "/api/v1/browse", {}, None),  # 401
        ("GET", "/api/v1/browse", {"Authorization": "Bearer tp_live_garbage"}, None),
        ("POST", "/api/v1/browse", key, b"{}"),  # 405
        ("GET", "/api/v1/search", key, None),  # 400: q is required
        ("GET", "/api/v1/moments/a%0Ab", key, None),  # invalid path
        ("GET", "/api/v1/browse/", key, None),
        ("OPTIONS", "/api/v1/browse", {**origin, "Access-Control-Request-Method": "GET"}, None),
        ("POST", "/api/v1/generate", key, b"x" * (settings.MAX_REQUEST_BODY_BYTES + 1)),  # 413
        ("POST", "/api/v1/generate", {**key, "Content-Type": "text/plain"}, b"{}"),  # 415
        ("GET", "/api/v1/browse", {"X-API-Key": "tp_svc_" + "a" * 40}, None),  # service secret
        ("GET", "/health", {}, None),
    ]
    for method, path, headers, body in requests:
        answers = []
        for on in (True, False):
            lane_switch(on)
            answers.append(_answer(gateway.request(method, path, headers=headers, content=body)))
        assert answers[0] == answers[1], (method, path)
