"""Generations, sync and async starts: validated, priced, admitted, recorded before Flash is
called, settled from its answer (`relay.refunds` refunds what failed).

Flash keeps the credits, but it loses concurrent updates (upstreams.md pitfall 11) and trusts the
gateway for everything else (pitfalls 5-9), so before a generation reaches Flash the gateway:

1. validates the body against Flash's fields and lower-cases the preset (pitfall 8, 13);
2. prices it from Flash's own cost table (cached for a minute, `relay.pricing`);
3. refuses HD presets to callers without HD access;
4. reads the balance and holds the cost and the user's credits (`relay.credit_holds`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from django.conf import settings

from accounts.services import flash_account_ensure
from apikeys import budgets
from relay import refunds
from relay.calls import RelayCall
from relay.credit_holds import GRANT_WAIT_SECONDS, release, release_later, reserve
from relay.models import Outcome
from relay.pricing import HD_PRESETS, flash_costs, preset_cost
from relay.serializers import GenerateInputSerializer
from relay.sse import event_bytes
from timepoint_billing.callers import Caller
from timepoint_billing.db import run_db
from timepoint_billing.errors import (
    ApiError,
    Forbidden,
    InsufficientCredits,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from upstreams import flash
from upstreams.flash_credit_lock import (
    GrantInFlight,
)

if TYPE_CHECKING:
    from apikeys.models import APIKey

logger = logging.getLogger("timepoint.relay")

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
    def budget_key(self) -> APIKey | None:
        """The live API key whose monthly budget this generation counts against, if any."""
        key = self.caller.api_key
        return key if key is not None and not self.caller.is_test_mode else None


async def generation_prepare(
    *, caller: Caller, data: dict[str, Any], request_id: str, stream: bool
) -> Generation:
    """Validate and price a generation body; nothing is sent to Flash but the (cached) costs."""
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
    key = generation.budget_key
    if key is not None:
        await run_db(
            budgets.budget_hold,
            key=key,
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
            await reserve(flash_user_id=flash_user_id, cost=generation.cost, balance=balance)
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


async def generation_release(generation: Generation, *, delay: float = 0.0) -> None:
    """Give the generation's reservation back (now, or `delay` seconds later); once."""
    if not generation.reserved:
        return
    generation.reserved = False
    flash_user_id, cost = generation.flash_user_id, generation.cost
    if delay > 0:
        release_later(flash_user_id=flash_user_id, cost=cost, delay=delay)
    else:
        await release(flash_user_id=flash_user_id, cost=cost)


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
    generation: Generation,
    outcome: str,
    *,
    timepoint_id: str | None = None,
    why: str = "",
    call: RelayCall | None = None,
) -> None:
    """Flash's answer arrived: record the outcome (a failed one records its refund). With the
    `call` not recorded yet, its usage record is written afterwards with what it cost, so there
    is none to correct (one UPDATE fewer per generation)."""
    await run_db(
        refunds.forwarded_settle,
        request_id=generation.request_id,
        outcome=outcome,
        timepoint_id=timepoint_id,
        why=why,
        usage_recorded=call is None or call.recorded,
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
            await generation_settled(
                generation, Outcome.FAILED, timepoint_id=timepoint_id, call=call
            )
        else:
            await generation_settled(
                generation, Outcome.COMPLETED, timepoint_id=timepoint_id, call=call
            )
            call.credits_spent = generation.cost
        return body
    finally:
        await generation_release(generation)


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
        await forwarding_failed(generation, exc)
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


async def forwarding_failed(generation: Generation, exc: ApiError) -> NoReturn:
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
