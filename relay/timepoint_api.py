"""The relay's routes for a person's own timepoints (issue 23): list mine, open by slug, the
characters, delete, and asynchronous generation. Same pattern as `relay/api.py`: authenticated,
rate-limited and metered by `relay_route`; the rules live in `relay/timepoints.py` and
`relay/async_generation.py`."""

from __future__ import annotations

import re
import uuid
from typing import Any

from django.http import HttpRequest

from accounts.scopes import Scope
from relay import async_generation, mine, paths, services, timepoints
from relay.api import (
    PREFIX,
    SIMULATED,
    Answer,
    _bool_param,
    _int_param,
    _prepared_generation,
    relay_route,
)
from timepoint_billing.errors import BadRequest, InvalidPath

# Flash's slugs: the lower-cased query's word characters and hyphens, a year, a 6-character
# suffix (`generate_slug`), at most 100 characters. Only ASCII ones can be opened here: the relay
# refuses percent-encoding in paths (relay/paths.py); others are opened by id.
SLUG = re.compile(r"[a-z0-9_-]{1,100}")


@relay_route(f"{PREFIX}/timepoints/mine", "flash", "timepoint_list_mine", scope=Scope.READ)
async def timepoint_list_mine(request: HttpRequest, call: services.RelayCall) -> Any:
    status = request.GET.get("status")
    if status is not None and status not in timepoints.STATUSES:
        raise BadRequest(
            f"status must be one of {', '.join(timepoints.STATUSES)}.", code="invalid_request"
        )
    return await mine.timepoint_list_mine(
        caller=call.caller,
        page=_int_param(request, "page", 1, 1, mine.MINE_MAX_DEPTH),
        page_size=_int_param(request, "page_size", 20, 1, 100),
        status=status,
    )


@relay_route(f"{PREFIX}/timepoints/slug/{{slug}}", "flash", "timepoint_by_slug", scope=Scope.READ)
async def timepoint_by_slug(request: HttpRequest, call: services.RelayCall, **_: Any) -> Any:
    slug = paths.path_parameter(request, f"{PREFIX}/timepoints/slug/")
    if not SLUG.fullmatch(slug):
        raise InvalidPath("A slug is lower-case letters, digits, `_` and `-`.")
    return await timepoints.timepoint_read_by_slug(
        caller=call.caller, slug=slug, full=_bool_param(request, "full")
    )


@relay_route(
    f"{PREFIX}/timepoints/{{id}}/characters", "flash", "timepoint_characters", scope=Scope.READ
)
async def timepoint_characters(request: HttpRequest, call: services.RelayCall, **_: Any) -> Any:
    timepoint_id = paths.flash_timepoint_id(request, f"{PREFIX}/timepoints/", "/characters")
    return await timepoints.timepoint_characters(caller=call.caller, timepoint_id=timepoint_id)


@relay_route(
    f"{PREFIX}/timepoints/{{id}}",
    "flash",
    ("timepoint_detail", "timepoint_delete"),
    scope={"GET": Scope.READ, "DELETE": Scope.PUBLISH},  # deleting changes what is published
)
async def timepoint_detail(request: HttpRequest, call: services.RelayCall, **_: Any) -> Any:
    """GET: one timepoint, yours or public. DELETE: one of yours (soft unless `permanent`)."""
    timepoint_id = paths.flash_timepoint_id(request, f"{PREFIX}/timepoints/")
    if request.method == "DELETE":
        return await timepoints.timepoint_delete(
            caller=call.caller,
            timepoint_id=timepoint_id,
            permanent=_bool_param(request, "permanent"),
        )
    return await timepoints.timepoint_read(
        caller=call.caller,
        timepoint_id=timepoint_id,
        full=_bool_param(request, "full"),
        include_image=_bool_param(request, "include_image"),
    )


@relay_route(
    f"{PREFIX}/generate/async", "flash", "generate_async", scope=Scope.GENERATE, spends_credits=True
)
async def generate_async(request: HttpRequest, call: services.RelayCall) -> Answer:
    generation = await _prepared_generation(request, call, stream=False)
    if call.caller.is_test_mode:
        simulated = {
            "id": str(uuid.uuid4()),
            "status": "completed",
            "poll_url": None,
            "request_context": generation.payload.get("request_context"),
            "test_mode": True,
        }
        return Answer(simulated, headers=SIMULATED)
    await services.generation_admit(generation)
    body = await async_generation.generation_start_async(generation, call)
    return Answer(body, status=202, headers={"Location": body["poll_url"]})
