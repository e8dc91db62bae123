"""What the relay changes: credit reservations, the per-user "generation in flight" marker,
generations (sync and streamed) and the refunds of failed ones.

Flash keeps the credits, but it loses concurrent updates (upstreams.md pitfall 11) and trusts the
gateway for everything else (pitfalls 5-9), so before a generation reaches Flash the gateway:

1. validates the body against Flash's fields and lower-cases the preset (pitfall 8, 13);
2. prices it from Flash's own cost table (cached for a minute);
3. refuses HD presets to callers without HD access;
4. reads the balance and *reserves* the cost in the shared cache: one counter per Flash user,
   incremented atomically (`cache.incr`, atomic on LocMem and Redis) and compared with the balance,
   so N parallel requests with credits for one admit exactly one, across processes;
5. marks the user busy (`upstreams.flash_credit_lock`, the lock grants take too) so the grant
   worker waits until Flash has written the generation's charge back (pitfall 11), and, the other
   way round, waits (bounded, then 503 `credits_busy`) while a grant holds the user's credits.
Both keys carry a TTL longer than the generation timeout, so a killed worker cannot leak them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, NoReturn

from django.conf import settings
from django.core.cache import cache

from accounts.services import flash_account_ensure
from apikeys import budgets
from relay import refunds
from relay.models import Outcome
from relay.projection import Projection
from relay.sse import EventSplitter, event_bytes, event_data
from timepoint_billing.callers import Caller
from timepoint_billing.db import run_db
from timepoint_billing.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    InsufficientCredits,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from upstreams import flash
from upstreams.flash_credit_lock import (
    GrantInFlight,
    counter_add,
    counter_sub,
    generation_busy_mark,
    generation_busy_unmark,
)
from upstreams.http import UpstreamStream

logger = logging.getLogger("timepoint.relay")

# Flash's preset names (upstreams.md A4). Any other value is refused before pricing.
PRESETS = frozenset({"balanced", "hd", "hyper", "gemini3", "free_distillable", "frontier"})
# Presets that need a plan or tier with HD access: `hd` (10 credits) and `frontier` (Claude Opus,
# which Flash under-prices at 5; pitfall 8).
HD_PRESETS = frozenset({"hd", "frontier"})
COSTS_CACHE_KEY = "relay:flash-costs"


def costs_cache_seconds() -> float:
    return float(settings.FLASH_COSTS_CACHE_SECONDS)


def stream_settle_seconds() -> float:
    """How long a stream's reservation and busy marker outlive its end: Flash writes a streamed
    generation's charge back only after the stream has closed (pitfall 11)."""
    return float(settings.RELAY_STREAM_SETTLE_SECONDS)


def generation_hold_seconds() -> int:
    """TTL of reservations and busy markers: longer than any generation can run."""
    longest = max(settings.UPSTREAM_GENERATE_TIMEOUT, settings.SSE_MAX_DURATION_SECONDS)
    return int(longest) + 60


# --- Flash's cost table


async def flash_costs() -> dict[str, int]:
    """Flash's `/credits/costs` table, cached for about a minute (it changes with deploys)."""
    cached = cache.get(COSTS_CACHE_KEY)
    if isinstance(cached, dict):
        return cached
    response = await flash.acall("GET", "/api/v1/credits/costs")
    if response.status_code != 200:
        raise flash.error_from_flash(response)
    try:
        costs = {str(k): int(v) for k, v in response.json()["costs"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpstreamError("Flash returned an invalid cost table.") from exc
    cache.set(COSTS_CACHE_KEY, costs, costs_cache_seconds())
    return costs


def preset_cost(costs: dict[str, int], preset: str) -> int:
    """What Flash will charge: `costs["generate_" + preset]`, else its default of 5 (A4)."""
    return int(costs.get(f"generate_{preset}", costs.get("generate_balanced", 5)))


# --- Reservations and the busy marker


def reservation_key(flash_user_id: str) -> str:
    return f"relay:reserved:{flash_user_id}"


# How long a generation waits for a grant to this user to finish before answering 503.
GRANT_WAIT_SECONDS = 3.0


def reservation_total(flash_user_id: str) -> int:
    value = cache.get(reservation_key(flash_user_id))
    return int(value) if isinstance(value, int) else 0


def reserve(*, flash_user_id: str, cost: int, balance: int) -> None:
    """Hold `cost` against `balance` and mark the user busy; 402 if the credits are already held
    by other generations, GrantInFlight (nothing held) while a grant changes the user's credits."""
    ttl = generation_hold_seconds()
    total = counter_add(reservation_key(flash_user_id), cost, ttl)
    if total > balance:
        counter_sub(reservation_key(flash_user_id), cost, ttl)
        available = max(0, balance - (total - cost))
        raise InsufficientCredits(
            f"This generation costs {cost} credits; {available} are available.",
            extra={"balance": balance, "available": available, "cost": cost},
        )
    try:
        generation_busy_mark(flash_user_id, ttl=ttl)
    except BaseException:
        counter_sub(reservation_key(flash_user_id), cost, ttl)
        raise


def release(*, flash_user_id: str, cost: int) -> None:
    """Give back a reservation and the busy mark (idempotence is the caller's: call once)."""
    ttl = generation_hold_seconds()
    counter_sub(reservation_key(flash_user_id), cost, ttl)
    generation_busy_unmark(flash_user_id, ttl=ttl)


def release_later(*, flash_user_id: str, cost: int, delay: float) -> None:
    """`release` after `delay` seconds on the running loop (the TTL covers a process exit)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        release(flash_user_id=flash_user_id, cost=cost)
        return
    loop.call_later(delay, lambda: release(flash_user_id=flash_user_id, cost=cost))


# --- Generations


@dataclass
class Generation:
    """A validated, priced generation request for one caller."""

    caller: Caller
    payload: dict[str, Any]
    preset: str
    cost: int
    request_id: str
    reserved: bool = False
    budget_held: bool = False  # a KeySpend row counts this generation against its key's month
    extra: dict[str, Any] = field(default_factory=dict)
    # Streams: awaited with Flash's final `done` event (as it is passed on, decoded) before it
    # is passed on (the owner record of the streamed timepoint, `relay.timepoints`).
    on_done: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    @property
    def flash_user_id(self) -> str:
        return str(self.caller.user.flash_user_id or "")

    @property
    def budget_key_id(self) -> int | None:
        """The live API key whose monthly budget this generation counts against, if any."""
        key = self.caller.api_key
        return key.pk if key is not None and not self.caller.is_test_mode else None


async def generation_prepare(
    *, caller: Caller, data: dict[str, Any], request_id: str, stream: bool
) -> Generation:
    """Validate and price a generation body; nothing is sent to Flash but the (cached) costs."""
    from relay.serializers import GenerateInputSerializer

    serializer = GenerateInputSerializer(data=data, context={"stream": stream})
    serializer.is_valid(raise_exception=True)
    payload = dict(serializer.validated_data)
    preset = payload["preset"]
    # HD follows the plan, or the tier of the caller: a key staff raised to enterprise has it.
    hd_tier = caller.tier in ("pro", "enterprise")
    if preset in HD_PRESETS and not (caller.user.has_hd_access or hd_tier):
        raise Forbidden(
            f"The {preset!r} preset needs a plan with HD access.", code="preset_not_allowed"
        )
    cost = preset_cost(await flash_costs(), preset)
    return Generation(
        caller=caller, payload=payload, preset=preset, cost=cost, request_id=request_id
    )


async def generation_admit(generation: Generation) -> None:
    """The key's budget hold, the balance pre-check and the credit reservation (402 before
    anything reaches Flash, not even the balance read for a key past its budget). The budget
    hold is dropped again when the rest refuses: both holds stand or fall together."""
    # Never relay a generation without X-User-Id (Flash would run it as a free system call): a
    # user without a Flash id is resolved first.
    flash_user_id = await flash_user_ensure(generation.caller)
    key_id = generation.budget_key_id
    if key_id is not None:
        await run_db(
            budgets.budget_hold,
            key_id=key_id,
            request_id=generation.request_id,
            amount=generation.cost,
        )
        generation.budget_held = True
    try:
        await _admit_credits(generation, flash_user_id)
    except BaseException:
        if generation.budget_held:
            generation.budget_held = False
            await run_db(budgets.budget_drop, request_id=generation.request_id)
        raise


async def _admit_credits(generation: Generation, flash_user_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GRANT_WAIT_SECONDS
    while True:
        response = await flash.acall("GET", "/api/v1/credits/balance", user_id=flash_user_id)
        if response.status_code != 200:
            raise flash.error_from_flash(response)
        try:
            balance = flash.credit_balance_from(response.json())["balance"]
        except ValueError as exc:
            raise UpstreamError("Flash returned an invalid answer.") from exc
        if balance < generation.cost:
            raise InsufficientCredits(
                f"This generation costs {generation.cost} credits; your balance is {balance}.",
                extra={"balance": balance, "available": balance, "cost": generation.cost},
            )
        try:
            reserve(flash_user_id=flash_user_id, cost=generation.cost, balance=balance)
        except GrantInFlight:
            # A grant is changing this user's credits in Flash right now (pitfall 11): wait for
            # it (grants take milliseconds), then price against the new balance.
            if loop.time() >= deadline:
                raise ServiceUnavailable(
                    "Your credits are being updated; retry in a moment.",
                    code="credits_busy",
                    retry_after=1,
                ) from None
            await asyncio.sleep(0.05)
            continue
        generation.reserved = True
        return


def generation_release(generation: Generation, *, delay: float = 0.0) -> None:
    if not generation.reserved:
        return
    generation.reserved = False
    if delay > 0:
        release_later(flash_user_id=generation.flash_user_id, cost=generation.cost, delay=delay)
    else:
        release(flash_user_id=generation.flash_user_id, cost=generation.cost)


async def generation_forwarded(generation: Generation, *, route: str) -> None:
    """Commit the generation's record before Flash is called (`relay.refunds`)."""
    await run_db(
        refunds.forwarded_record,
        request_id=generation.request_id,
        user=generation.caller.user,
        flash_user_id=generation.flash_user_id,
        route=route,
        query=str(generation.payload["query"]),
        preset=generation.preset,
        cost=generation.cost,
    )


async def generation_settled(
    generation: Generation, outcome: str, *, timepoint_id: str | None = None, why: str = ""
) -> None:
    """Flash's answer arrived: record the outcome (a failed one records its refund)."""
    await run_db(
        refunds.forwarded_settle,
        request_id=generation.request_id,
        outcome=outcome,
        timepoint_id=timepoint_id,
        why=why,
    )


async def generation_lost(generation: Generation, error: str) -> None:
    """Flash's answer was lost after the request was sent: the worker will find out."""
    await run_db(refunds.forwarded_unknown, request_id=generation.request_id, error=error)


def simulated_timepoint(generation: Generation) -> dict[str, Any]:
    """What a `tp_test_` key gets instead of a generation: a completed-looking, clearly marked
    TimepointResponse that never reached Flash and spent nothing."""
    payload = generation.payload
    return {
        "id": str(uuid.uuid4()),
        "query": payload["query"],
        "slug": "test-mode-simulated",
        "status": "completed",
        "year": None,
        "month": None,
        "day": None,
        "season": None,
        "time_of_day": None,
        "era": None,
        "location": None,
        "has_image": False,
        "image_url": None,
        "text_model_used": None,
        "image_model_used": None,
        "model_provider": None,
        "model_permissiveness": None,
        "created_at": None,
        "error": None,
        "is_deleted": False,
        "sequence_id": None,
        "render_type": "image",
        "generation_version": 0,
        "tags": [],
        "visibility": payload.get("visibility") or "public",
        "share_url": None,
        "preset_used": generation.preset,
        "generation_time_ms": 0,
        "request_context": payload.get("request_context"),
        "test_mode": True,
    }


def simulated_stream_events(generation: Generation) -> list[bytes]:
    payload = generation.payload

    def event(name: str, step: str | None, data: Any, progress: int) -> bytes:
        body = {"event": name, "step": step, "data": data, "progress": progress, "error": None}
        return event_bytes(body)

    start = {
        "query": payload["query"],
        "generate_image": payload["generate_image"],
        "preset": generation.preset,
        "test_mode": True,
    }
    done = {
        "timepoint_id": None,
        "slug": "test-mode-simulated",
        "status": "completed",
        "year": None,
        "location": None,
        "total_latency_ms": 0,
        "has_image": False,
        "saved": False,
        "test_mode": True,
    }
    return [event("start", "initialization", start, 0), event("done", "complete", done, 100)]


def outbound_generation_body(generation: Generation) -> dict[str, Any]:
    """Only the validated fields, re-serialised: nothing else of the client's body is sent."""
    return {key: value for key, value in generation.payload.items() if value is not None}


async def flash_user_ensure(caller: Caller) -> str:
    """The caller's Flash id; a user without one is resolved in Flash at this first credit call."""
    flash_user_id = str(caller.user.flash_user_id or "")
    if flash_user_id:
        return flash_user_id
    return str(await run_db(flash_account_ensure, user=caller.user))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def bad_json(body: bytes) -> dict[str, Any]:
    """Parse a JSON object body or raise 400 (strict: no NaN/Infinity, bounded nesting)."""
    try:
        data = json.loads(body or b"{}", parse_constant=_no_constant)
    except ValueError:
        raise BadRequest("The body is not valid JSON.", code="invalid_json")
    except RecursionError:  # `[[[[…` 100 000 deep: a 500 before this
        raise BadRequest("The body is nested too deeply.", code="invalid_json")
    try:
        # `"\ud800"` parses to a lone surrogate, which no UTF-8 request to Flash can carry.
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise BadRequest("The body contains invalid unicode.", code="invalid_json")
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.", code="invalid_request")
    return data


# --- One relayed call: its usage record, written exactly once


@dataclass
class RelayCall:
    """The bookkeeping of one relayed request: who, which route, and what it cost."""

    request_id: str
    caller: Caller
    endpoint: str
    method: str
    upstream: str
    started: float
    lease: Any = None
    status: int = 0
    credits_spent: int = 0
    preset: str = ""
    partial: bool = False
    recorded: bool = False
    body_started: bool = False  # a stream's body is being sent (see `stream_guard`)

    def record(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        from metering.services import record_usage

        api_key = self.caller.api_key
        record_usage(
            request_id=self.request_id,
            user_id=self.caller.user.pk,
            api_key_id=api_key.pk if api_key is not None else None,
            endpoint=self.endpoint,
            method=self.method,
            status=self.status,
            credits_spent=self.credits_spent,
            response_time_ms=(time.perf_counter() - self.started) * 1000,
            preset=self.preset,
            upstream=self.upstream,
            partial=self.partial,
        )

    async def finish(self) -> None:
        """Write the usage record, then release the rate-limit lease (both idempotent). The
        record first: it does no I/O, while the release awaits Redis and may be cancelled (the
        client went away), which must not cost the record."""
        self.record()
        if self.lease is not None:
            await self.lease.release()


# --- Generations: the sync call


async def generation_run_sync(generation: Generation, call: RelayCall) -> dict[str, Any]:
    """POST /generate/sync for the caller, recorded before the call (`relay.refunds`).

    A `status: "failed"` answer is charged by Flash and not refunded (pitfall 9): the gateway
    refunds it. Flash's own 4xx charged nothing and its 500/504 answers refunded themselves.
    When the answer is lost after the request was sent (cut, timeout, truncated or unparseable
    body, or a 5xx that is not Flash's), the client gets `upstream_outcome_unknown` and the
    worker settles it from Flash's records."""
    try:
        body = await generation_forward(
            generation,
            route="sync",
            path="/api/v1/timepoints/generate/sync",
            read_timeout=settings.UPSTREAM_GENERATE_TIMEOUT,
        )
        timepoint_id = str(body["id"]) if body.get("id") else None
        if body.get("status") == "failed":
            await generation_settled(generation, Outcome.FAILED, timepoint_id=timepoint_id)
        else:
            await generation_settled(generation, Outcome.COMPLETED, timepoint_id=timepoint_id)
            call.credits_spent = generation.cost
        return body
    finally:
        generation_release(generation)


async def generation_forward(
    generation: Generation, *, route: str, path: str, read_timeout: float | None = None
) -> dict[str, Any]:
    """POST the generation to Flash, recorded before the call (`relay.refunds`), and return
    Flash's JSON answer (sync and async alike). Flash's own error answer (a 4xx it never
    charged, a 500/504 it refunded itself) is settled as not charged and raised; an answer lost
    after the request was sent (cut, timeout, a 5xx that is not Flash's, an unparseable body) is
    left to the reconcile worker and raised as `upstream_outcome_unknown`."""
    await generation_forwarded(generation, route=route)
    try:
        response = await flash.acall(
            "POST",
            path,
            user_id=generation.flash_user_id,
            json=outbound_generation_body(generation),
            extra_headers={"X-Request-ID": generation.request_id},
            read_timeout=read_timeout,
        )
    except ApiError as exc:
        await _forwarding_failed(generation, exc)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        flash_answered = isinstance(body, dict) and "error" in body
        if response.status_code >= 500 and not flash_answered:
            # Not Flash's own error body (a proxy's page?): Flash may have run it.
            await generation_lost(generation, f"answer {response.status_code} not Flash's")
            raise refunds.outcome_unknown_error(generation.request_id, timed_out=False)
        # Flash refunds its own 500/504 (and never charged a 4xx).
        await generation_settled(generation, Outcome.NOT_CHARGED)
        raise flash.error_from_flash(response)
    if not isinstance(body, dict):
        await generation_lost(generation, "unparseable answer")
        raise refunds.outcome_unknown_error(generation.request_id, timed_out=False)
    return body


async def _forwarding_failed(generation: Generation, exc: ApiError) -> NoReturn:
    """Record a failed forward of `generation` and raise what the client is told (sync and
    stream alike): never sent → settled as not charged, the error itself; sent → lost, its
    outcome left to the reconcile worker, and `upstream_outcome_unknown`."""
    if not refunds.request_was_sent(exc):
        await generation_settled(generation, Outcome.NOT_CHARGED)
        raise exc
    await generation_lost(generation, exc.detail_text)
    raise refunds.outcome_unknown_error(
        generation.request_id, timed_out=isinstance(exc, UpstreamTimeout)
    ) from exc


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
        await _forwarding_failed(generation, exc)
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
                for event in await passed_on(events.close()):
                    yield event
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
            for event in await passed_on(events.feed(chunk)):
                yield event
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
            await generation_settled(generation, Outcome.ABANDONED)
        elif outcome is None:
            await generation_lost(generation, f"stream ended before its final event ({ended})")
        elif outcome[0] == "completed":
            call.credits_spent = generation.cost
            await generation_settled(generation, Outcome.COMPLETED, timepoint_id=outcome[1])
        else:
            await generation_settled(
                generation, Outcome.FAILED, timepoint_id=outcome[1], why="generation failed"
            )
    except Exception:
        # The record stays in flight: the worker settles it once no generation can still run.
        logger.exception("generation outcome not recorded", extra={"request_id": call.request_id})
    finally:
        # Flash writes a stream's charge back after the stream closed (pitfall 11): hold the
        # reservation and the busy marker a moment longer.
        generation_release(generation, delay=stream_settle_seconds())
        await call.finish()


async def simulated_stream(generation: Generation, call: RelayCall) -> AsyncIterator[bytes]:
    try:
        for event in simulated_stream_events(generation):
            yield event
    finally:
        call.status = 200
        await call.finish()
