"""POST /generate/stream through the real ASGI stack (uvicorn on loopback)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.django_db(transaction=True)

STREAM = "/api/v1/generate/stream"


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(block[len("data: ") :])
        for block in raw.decode().split("\n\n")
        if block.startswith("data: ")
    ]


def _wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_events_arrive_one_by_one(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    flash_peer.stream_step_delay = 0.15
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        assert "X-RateLimit-Limit" in response.headers
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    events = _events(b"".join(c for _, c in arrivals))
    assert events[0]["event"] == "start"
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "completed"
    # The first event long before the last: nothing was buffered.
    event_times = [t for t, chunk in arrivals if b"data: " in chunk]
    assert len(event_times) == len(events)
    assert event_times[-1] - event_times[0] > 0.15 * (len(events) - 2)
    assert event_times[0] < event_times[-1] - 1.0

    _wait_for(lambda: flash_peer.user_balance(user.flash_user_id) == 45)
    sent = flash_peer.requests_to(STREAM.replace("/api/v1/", "/api/v1/timepoints/"))[-1]
    assert "x-gateway-metered" not in sent.headers
    _wait_for(lambda: len(usage()) == 1)
    (row,) = usage()
    assert (row.endpoint, row.status, row.credits_spent, row.partial) == (STREAM, 200, 5, False)


def test_heartbeat_while_flash_is_silent(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, settings: Any
) -> None:
    settings.SSE_HEARTBEAT_SECONDS = 0.1
    flash_peer.stream_step_delay = 0.35
    flash_peer.generation_outcome = "failed"  # a short stream: start, step_error, done
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        raw = b"".join(response.iter_raw())
    assert raw.count(b": keep-alive\n\n") >= 2
    assert [e["event"] for e in _events(raw)] == ["start", "step_error", "done"]


def test_client_disconnect_closes_upstream_and_records_partial_once(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    flash_peer.stream_step_delay = 1.0
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        for chunk in response.iter_raw():
            if b"data: " in chunk:
                break
        closed_at = time.monotonic()
    # Leaving the block closes the client connection.
    _wait_for(lambda: flash_peer.stream_disconnect_times, timeout=2)
    assert flash_peer.stream_disconnect_times[0] - closed_at < 1.0
    _wait_for(lambda: len(usage()) == 1)
    time.sleep(0.2)
    (row,) = usage()
    assert (row.endpoint, row.partial, row.credits_spent) == (STREAM, True, 5)
    from payments.models import CreditGrant

    assert not CreditGrant.objects.exists()  # the client went away: charged, not refunded


def test_client_disconnect_frees_the_concurrency_slot(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, settings: Any
) -> None:
    """With one request in flight allowed, a stream the client abandons gives its slot back:
    the next call is admitted, not refused with 429 until the lease's TTL."""
    settings.USER_CONCURRENCY_LIMIT = 1
    flash_peer.stream_step_delay = 1.0
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        # Keep the iterator referenced: a dropped one closes the connection at once.
        chunks = response.iter_raw()
        for chunk in chunks:
            if b"data: " in chunk:
                break
        busy = gateway.get("/api/v1/credits/balance", headers=auth)
        assert busy.status_code == 429 and busy.json()["code"] == "rate_limited", busy.text
        assert "concurrency" in busy.json()["detail"].lower()
        assert flash_peer.stream_disconnect_times == []  # the stream is still running
    del chunks
    _wait_for(lambda: gateway.get("/api/v1/credits/balance", headers=auth).status_code == 200)


@pytest.mark.parametrize(
    ("knob", "value"),
    [("generation_outcome", "failed"), ("generation_outcome", "error"), ("stream_cut_after", 3)],
)
def test_failed_or_cut_streams_are_refunded(
    gateway: Any,
    auth: Any,
    flash_peer: Any,
    user: Any,
    usage: Any,
    settings: Any,
    knob: str,
    value: Any,
) -> None:
    from payments.models import CreditGrant
    from payments.services import grant_deliver

    settings.RELAY_STREAM_SETTLE_SECONDS = 0.3
    settings.GENERATION_RECONCILE_DELAY_SECONDS = 0
    setattr(flash_peer, knob, value)
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        try:
            raw = b"".join(response.iter_raw())
        except httpx.HTTPError:
            raw = b""
    assert response.status_code == 200
    if knob == "stream_cut_after":
        # Cut before its final event: the outcome is unknown until the worker asks Flash.
        from relay.models import ForwardedGeneration
        from relay.reconcile import generations_reconcile_due

        _wait_for(lambda: ForwardedGeneration.objects.filter(state="unknown").exists())
        assert not CreditGrant.objects.exists()
        _wait_for(lambda: generations_reconcile_due() == 1)
        assert generations_reconcile_due() == 0  # settled once
    _wait_for(lambda: CreditGrant.objects.exists())
    (grant,) = CreditGrant.objects.all()
    assert (grant.amount, grant.transaction_type) == (5, "refund")
    _wait_for(lambda: len(usage()) == 1)
    (row,) = usage()
    assert row.credits_spent == 0
    assert row.partial is (knob == "stream_cut_after")
    # The busy marker outlives the stream by the settle delay; the grant waits for it.
    grant_deliver(grant.pk)
    assert flash_peer.user_balance(user.flash_user_id) == 50
    del raw


def test_maximum_duration(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, settings: Any, usage: Any
) -> None:
    settings.SSE_MAX_DURATION_SECONDS = 0.5
    flash_peer.stream_step_delay = 0.3
    started = time.monotonic()
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        raw = b"".join(response.iter_raw())
    assert time.monotonic() - started < 1.5
    events = _events(raw)
    assert events[-1]["event"] == "error" and "maximum duration" in events[-1]["error"]
    _wait_for(lambda: flash_peer.stream_disconnect_times)
    _wait_for(lambda: len(usage()) == 1)
    assert usage()[0].partial is True


def test_stream_checks_credits_first(gateway: Any, auth: Any, flash_peer: Any, user: Any) -> None:
    flash_peer.set_balance(user.flash_user_id, 0)
    poor = gateway.post(STREAM, json={"query": "Apollo 11"}, headers=auth)
    assert poor.status_code == 402 and poor.headers["content-type"] == "application/json"
    assert flash_peer.requests_to("/api/v1/timepoints/generate") == []


def test_stream_with_a_test_key_is_simulated(
    gateway: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    from apikeys.services import key_create

    _, raw_key = key_create(user=user, name="ci", mode="test")
    headers = {"Authorization": f"Bearer {raw_key}"}
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=headers) as response:
        raw = b"".join(response.iter_raw())
    events = _events(raw)
    assert [e["event"] for e in events] == ["start", "done"]
    assert events[-1]["data"]["test_mode"] is True
    assert flash_peer.requests_to("/api/v1/timepoints/generate") == []
    _wait_for(lambda: len(usage()) == 1)


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("final_line_ends", [0, 1], ids=["no-line-end", "no-blank-line"])
def test_events_split_at_every_byte_and_unterminated_done_are_kept(
    gateway: Any,
    auth: Any,
    flash_peer: Any,
    user: Any,
    usage: Any,
    line_end: bytes,
    final_line_ends: int,
) -> None:
    """Flash's events arrive one byte per chunk (every boundary, CRLF included, split at every
    offset) and the stream ends without the empty line after `done`: every event still reaches
    the client whole, and `done` settles the stream (charged, not partial, no refund)."""
    from payments.models import CreditGrant

    flash_peer.stream_line_end = line_end
    flash_peer.stream_bytewise = True
    flash_peer.stream_final_line_ends = final_line_ends
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    events = _events(raw)
    assert [e["event"] for e in events] == ["start"] + ["step_complete"] * 8 + ["done"]
    assert events[-1]["data"]["status"] == "completed"
    assert raw.endswith(b"\n\n")
    _wait_for(lambda: len(usage()) == 1)
    (row,) = usage()
    assert (row.status, row.credits_spent, row.partial) == (200, 5, False)
    assert not CreditGrant.objects.exists()
    _wait_for(lambda: flash_peer.user_balance(user.flash_user_id) == 45)
