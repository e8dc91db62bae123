"""Streamed generations: Flash's server-sent events passed on one by one, with heartbeats, a
maximum duration, and credits and the usage record settled however the stream ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from typing import Any

from django.conf import settings

from relay import refunds
from relay.calls import RelayCall
from relay.generations import (
    Generation,
    forwarding_failed,
    generation_forwarded,
    generation_lost,
    generation_release,
    generation_settled,
    outbound_generation_body,
    simulated_stream_events,
)
from relay.models import Outcome
from relay.projection import Projection
from relay.sse import EventSplitter, event_bytes, event_data
from timepoint_billing.errors import (
    ApiError,
)
from upstreams import flash
from upstreams.http import UpstreamStream

logger = logging.getLogger("timepoint.relay")


def stream_settle_seconds() -> float:
    """How long a stream's reservation and busy marker outlive its end: Flash writes a streamed
    generation's charge back only after the stream has closed (pitfall 11)."""
    return float(settings.RELAY_STREAM_SETTLE_SECONDS)


# --- Generations: the stream


def _sse_event(name: str, error: str, data: dict[str, Any] | None = None) -> bytes:
    return event_bytes({"event": name, "step": None, "data": data, "progress": 0, "error": error})


def _outcome_unknown_text(generation: Generation) -> str:
    return (
        "The gateway is checking the generation's outcome with Flash: a failed or unfinished "
        f"generation is refunded automatically. Request id {generation.request_id}."
    )


def _outcome_unknown_data(generation: Generation) -> dict[str, Any]:
    return {"code": refunds.OutcomeUnknown.default_code, "request_id": generation.request_id}


def _event_outcome(event: dict[str, Any]) -> tuple[str, str | None] | None:
    """(`completed`/`failed`/`error`, Flash's timepoint id) for a terminal Flash event."""
    name = event.get("event")
    payload = event.get("data")
    timepoint_id = payload.get("timepoint_id") if isinstance(payload, dict) else None
    timepoint_id = str(timepoint_id) if timepoint_id else None
    if name == "error":
        return "error", timepoint_id
    if name == "done":
        status = payload.get("status") if isinstance(payload, dict) else None
        return ("failed" if status == "failed" else "completed"), timepoint_id
    return None


async def generation_open_stream(generation: Generation) -> UpstreamStream:
    """Open Flash's SSE stream (recorded first); errors before the first byte come back as our
    JSON errors. Flash charges a stream before its 200, never with an error answer."""
    await generation_forwarded(generation, route="stream")
    try:
        response = await flash.astream(
            "POST",
            "/api/v1/timepoints/generate/stream",
            user_id=generation.flash_user_id,
            # Flash ignores `visibility` here (pitfall 10); the gateway applies it
            # (relay.timepoints).
            json={
                k: v for k, v in outbound_generation_body(generation).items() if k != "visibility"
            },
            extra_headers={
                "Accept": "text/event-stream",
                "Accept-Encoding": "identity",
                "X-Request-ID": generation.request_id,
            },
            read_timeout=settings.UPSTREAM_GENERATE_TIMEOUT,
        )
    except ApiError as exc:
        await forwarding_failed(generation, exc)
    if response.status_code != 200:
        try:
            await response.aread()
        except ApiError:
            pass  # the error status is what counts
        finally:
            await response.aclose()
        await generation_settled(generation, Outcome.NOT_CHARGED)
        raise flash.error_from_flash(response)
    return response


async def generation_stream(
    generation: Generation, upstream: UpstreamStream, call: RelayCall, project_event: Projection
) -> AsyncGenerator[bytes, None]:
    """Flash's events, passed on one by one as they complete, with a heartbeat comment while
    Flash is silent and a hard maximum duration. Each is rebuilt from the fields documented for
    its name (`project_event`); anything else Flash sends (another event name, a comment, a
    block that is not JSON) is not passed on.

    Whatever ends it (done, an upstream cut, the duration limit, or the client going away, which
    cancels this generator on ASGI) the `finally` closes the upstream at once, settles credits and
    writes one usage record (partial unless Flash's final event arrived).

    Charging (pitfalls 6, 9, 11): Flash charges the stream itself (the gateway never sends
    `X-Gateway-Metered`). When the stream ends in `done` with `status: "failed"`, in an `error`
    event (Flash's own refund is overwritten by its late charge write-back), the gateway
    records a refund (keyed on the timepoint id Flash sent). A stream that ends before its final
    event (cut, closed by Flash, or stopped by the gateway's limit) has an unknown outcome: the
    client's last event says so with the request id, and the worker finds out from Flash
    (`relay.refunds`). A client that goes away is charged: Flash skips its refund then and the
    generation ran on the client's request.
    """
    loop = asyncio.get_running_loop()
    heartbeat = settings.SSE_HEARTBEAT_SECONDS
    deadline = loop.time() + settings.SSE_MAX_DURATION_SECONDS
    lease = call.lease
    renew_every = max(1.0, float(getattr(lease, "lease_seconds", 60.0)) / 3)
    last_renew = loop.time()
    chunks = upstream.aiter_raw()
    pending: asyncio.Future[bytes] | None = None
    events = EventSplitter()
    outcome: tuple[str, str | None] | None = None
    ended = "client"  # until the loop says otherwise, an exit is the client going away

    async def passed_on(blocks: list[bytes]) -> list[bytes]:
        """Whole events of Flash's, as the client gets them; a terminal one sets the outcome and
        is handed to `on_done` first."""
        nonlocal outcome
        result: list[bytes] = []
        for block in blocks:
            event = project_event(event_data(block))
            if event is None:
                continue
            terminal = _event_outcome(event)
            if terminal is not None:
                outcome = terminal
                if terminal[0] in ("completed", "failed") and generation.on_done is not None:
                    on_done, generation.on_done = generation.on_done, None
                    await on_done(event)
            result.append(event_bytes(event))
        return result

    try:
        # The view takes this empty chunk to start the generator before handing it to Django: a
        # started generator is closed (running the `finally` below) however the request ends,
        # also when the client leaves before the body's first byte, which would otherwise leave
        # the upstream open, the credits reserved until their TTL and the call unmetered.
        yield b""
        call.body_started = True
        while True:
            now = loop.time()
            if now >= deadline:
                ended = "max_duration"
                yield _sse_event(
                    "error",
                    "The stream exceeded the gateway's maximum duration. "
                    + _outcome_unknown_text(generation),
                    _outcome_unknown_data(generation),
                )
                break
            if lease is not None and now - last_renew >= renew_every:
                last_renew = now
                await lease.renew()
            if pending is None:
                pending = asyncio.ensure_future(chunks.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=min(heartbeat, deadline - now))
            if not done:
                if loop.time() < deadline:
                    yield b": keep-alive\n\n"
                continue
            finished, pending = pending, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                ended = "upstream_closed"
                # Flash closed the stream: an event it did not follow with an empty line is
                # still its last word (often `done`), to pass on and settle by.
                last_words = await passed_on(events.close())
                if last_words:
                    yield b"".join(last_words)
                if outcome is None:
                    yield _sse_event(
                        "error",
                        "Flash ended the stream early. " + _outcome_unknown_text(generation),
                        _outcome_unknown_data(generation),
                    )
                break
            except ApiError:  # the upstream connection failed (UpstreamStream maps it)
                ended = "upstream_failed"
                if outcome is None:
                    yield _sse_event(
                        "error",
                        "Flash stopped answering. " + _outcome_unknown_text(generation),
                        _outcome_unknown_data(generation),
                    )
                break
            # The events one chunk completed go out as one body message: one ASGI send and one
            # socket write instead of one per event (issue 17), none of them held back.
            completed = await passed_on(events.feed(chunk))
            if completed:
                yield b"".join(completed)
    finally:
        if pending is not None:
            pending.cancel()
            with suppress(BaseException):
                await pending
        await upstream.aclose()
        await _stream_settle(generation, call, outcome=outcome, ended=ended)


# How long Django may take to start sending a stream's body once the view returned it.
STREAM_HANDOFF_SECONDS = 10.0
_abandoned_closes: set[asyncio.Task[None]] = set()


def stream_guard(stream: AsyncGenerator[bytes, None], response: Any, call: RelayCall) -> None:
    """Close a started stream whose body Django never sends: when the client leaves between the
    view's return and the body's first byte, Django drops the response without iterating it, and
    only the garbage collector would ever run the stream's cleanup. Closed when the response is
    closed, or at the latest STREAM_HANDOFF_SECONDS later."""
    loop = asyncio.get_running_loop()

    def close_if_abandoned() -> None:
        if call.body_started or call.recorded:
            return
        task = loop.create_task(stream.aclose())
        _abandoned_closes.add(task)
        task.add_done_callback(_abandoned_closes.discard)

    timer = loop.call_later(STREAM_HANDOFF_SECONDS, close_if_abandoned)

    def on_response_closed() -> None:  # Django calls it from a worker thread
        timer.cancel()
        loop.call_soon_threadsafe(close_if_abandoned)

    response._resource_closers.append(on_response_closed)


async def _stream_settle(
    generation: Generation,
    call: RelayCall,
    *,
    outcome: tuple[str, str | None] | None,
    ended: str,
) -> None:
    call.status = 200
    call.partial = outcome is None
    try:
        if outcome is None and ended == "client":
            call.credits_spent = generation.cost
            await generation_settled(generation, Outcome.ABANDONED, call=call)
        elif outcome is None:
            await generation_lost(generation, f"stream ended before its final event ({ended})")
        elif outcome[0] == "completed":
            call.credits_spent = generation.cost
            await generation_settled(
                generation, Outcome.COMPLETED, timepoint_id=outcome[1], call=call
            )
        else:
            await generation_settled(
                generation,
                Outcome.FAILED,
                timepoint_id=outcome[1],
                why="generation failed",
                call=call,
            )
    except Exception:
        # The record stays in flight: the worker settles it once no generation can still run.
        logger.exception("generation outcome not recorded", extra={"request_id": call.request_id})
    finally:
        # Flash writes a stream's charge back after the stream closed (pitfall 11): hold the
        # reservation and the busy marker a moment longer.
        await generation_release(generation, delay=stream_settle_seconds())
        await call.finish()


async def simulated_stream(generation: Generation, call: RelayCall) -> AsyncIterator[bytes]:
    try:
        for event in simulated_stream_events(generation):
            yield event
    finally:
        call.status = 200
        await call.finish()
