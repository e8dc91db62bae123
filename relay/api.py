"""The relay's routes: plain async Django views (DRF's per-request cost is too high for the hot
path, issue 9), an explicit allow-list. Each view authenticates, takes a rate-limit lease, calls
one service or selector and writes one usage record; errors become `{"detail","code"}` JSON.
(Past 400 lines: this module is the relay's whole allow-list of public routes, read as one list.)

Nothing of the client's request is forwarded as is: upstream headers are built from scratch in
`upstreams/flash.py` / `upstreams/clockchain.py`, bodies are validated and re-serialised, query
parameters are allow-listed and validated, path parameters are checked against the raw path
(`relay/paths.py`).
Nothing of an upstream's answer is passed on as is either: `relay_route` builds each answer from
the fields its route documents in the OpenAPI schema (`relay/projection.py`), so a field an
upstream adds never reaches a client undocumented.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial, wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import aauthenticate
from accounts.scopes import Scope
from apikeys import limits
from metering.services import usage_record_id
from relay import paths, selectors, services, timepoints
from relay.openapi import RECONCILE_SCHEMA, ROUTES, answer_projections, document
from relay.projection import Projection
from relay.serializers import VisibilityInputSerializer
from timepoint_billing import json_codec
from timepoint_billing.errors import (
    ApiError,
    BadRequest,
    InvalidPath,
    UpstreamError,
    api_error_response,
    error_response,
    exception_to_response,
)
from timepoint_billing.routes import API_V1
from upstreams import flash

AnyResponse = HttpResponse | StreamingHttpResponse
Handler = Callable[..., Awaitable[Any]]
PREFIX = "/" + API_V1.rstrip("/")  # where timepoint_billing/urls.py mounts relay/urls.py
# nginx's status for "the client closed the connection before the answer": what the usage record
# of a read abandoned by its client says.
CLIENT_CLOSED_REQUEST = 499


@dataclass(slots=True)
class Answer:
    """What a handler answers when it is not a plain 200: another documented success status,
    extra headers. A handler may also return the body alone (200) or, for a stream, a
    `StreamingHttpResponse` whose events it projects itself."""

    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def json_response(body: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(json_codec.dumps(body), status=status, content_type="application/json")


def _answered(result: Any, projections: dict[int, Projection]) -> AnyResponse:
    """The HTTP response of a handler's result: its body built from the fields documented for
    its status (`relay.projection`), nothing else of the upstream's."""
    if isinstance(result, StreamingHttpResponse):
        return result
    answer = result if isinstance(result, Answer) else Answer(result)
    # A status the route does not document is a bug in the handler: a 500, never an answer.
    response = json_response(projections[answer.status](answer.body), answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


def relay_route(
    endpoint: str,
    upstream: str,
    documented: str | tuple[str, ...],
    *,
    scope: str | dict[str, str],
    spends_credits: bool = False,
) -> Callable[[Handler], Any]:
    """Authentication, the scope check, the rate-limit lease, error JSON, the usage record and
    the answer's projection around a handler.

    `documented` names the route's entries in `relay.openapi.ROUTES` (one per HTTP method): they
    give the methods allowed, the OpenAPI schema of the view, and the serializers its answers
    are built from (`Answer`), so what the schema shows is all that leaves the gateway.

    `scope` (an `accounts.scopes.Scope`, or a mapping of HTTP method to scope) is what an API
    key needs for the route; a key without it
    gets 403 `scope_required` before the limiter, any credit hold or upstream call. It is also
    what the OpenAPI document names (`relay.openapi.document` reads `view.required_scope`).
    A streaming handler takes over the lease and the record (`call.finish()` at stream end)."""
    names = (documented,) if isinstance(documented, str) else documented
    methods = tuple(ROUTES[name][0] for name in names)
    projections = answer_projections(*names)

    def decorator(handler: Handler) -> Any:
        @csrf_exempt
        @wraps(handler)
        async def view(request: HttpRequest, **kwargs: Any) -> AnyResponse:
            if request.method not in methods:
                refused = error_response(405, "Method not allowed.", "method_not_allowed")
                refused["Allow"] = ", ".join(methods)
                return refused
            started = time.perf_counter()
            caller = await aauthenticate(request)
            caller.require_scope(scope if isinstance(scope, str) else scope[request.method])
            lease = await limits.acquire(caller, route=endpoint, spends_credits=spends_credits)
            call = services.RelayCall(
                request_id=usage_record_id(request),
                caller=caller,
                endpoint=endpoint,
                method=request.method or "GET",
                upstream=upstream,
                started=started,
                lease=lease,
            )
            response: AnyResponse | None = None
            try:
                result = await handler(request, call, **kwargs)
                response = _answered(result, projections[call.method])
            except asyncio.CancelledError:
                call.status = CLIENT_CLOSED_REQUEST  # the client left (asgi_handler)
                raise
            except ApiError as exc:
                response = api_error_response(exc)
            except Exception as exc:  # DRF validation errors and the unexpected: same JSON
                response = exception_to_response(exc, request)
            finally:
                if not isinstance(response, StreamingHttpResponse):
                    if response is not None:
                        call.status = response.status_code
                    elif not call.status:
                        call.status = 500
                    await call.finish()
            for name, value in lease.headers.items():
                response[name] = value
            return response

        view.required_scope = scope  # type: ignore[attr-defined]
        return document(*names)(view)

    return decorator


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer.", code="invalid_request")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}.", code="invalid_request")
    return value


def _bool_param(request: HttpRequest, name: str) -> bool:
    raw = request.GET.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadRequest(f"{name} must be true or false.", code="invalid_request")
    return raw in ("true", "1")


def _str_param(request: HttpRequest, name: str, *, max_length: int = 200) -> str | None:
    raw = request.GET.get(name)
    if raw is None:
        return None
    if len(raw) > max_length or any(ord(ch) < 0x20 for ch in raw):
        raise BadRequest(f"{name} is too long or has control characters.", code="invalid_request")
    return raw


async def _flash_json(response_awaitable: Awaitable[Any]) -> Any:
    response = await response_awaitable
    if response.status_code != 200:
        raise flash.error_from_flash(response)
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamError("Flash returned an invalid answer.") from exc


# --- Credits


@relay_route(f"{PREFIX}/credits/balance", "flash", "credits_balance", scope=Scope.READ)
async def credits_balance(request: HttpRequest, call: services.RelayCall) -> Any:
    user_id = await services.flash_user_ensure(call.caller)
    return await _flash_json(flash.acall("GET", "/api/v1/credits/balance", user_id=user_id))


@relay_route(f"{PREFIX}/credits/history", "flash", "credits_history", scope=Scope.READ)
async def credits_history(request: HttpRequest, call: services.RelayCall) -> Any:
    params = {
        "limit": _int_param(request, "limit", 20, 1, 100),
        "offset": _int_param(request, "offset", 0, 0, 1_000_000),
    }
    user_id = await services.flash_user_ensure(call.caller)
    return await _flash_json(
        flash.acall("GET", "/api/v1/credits/history", user_id=user_id, params=params)
    )


@relay_route(f"{PREFIX}/credits/costs", "flash", "credits_costs", scope=Scope.READ)
async def credits_costs(request: HttpRequest, call: services.RelayCall) -> Answer:
    return Answer(
        {"costs": await services.flash_costs()}, headers={"Cache-Control": "private, max-age=60"}
    )


# --- Generation

SIMULATED = {"X-Test-Mode": "simulated"}  # a test key's answer never reached Flash
# Each of Flash's events is passed on built from the fields documented for its name.
STREAM_EVENT = answer_projections("generate_stream")["POST"][200]


def _json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object. A body declared as anything but JSON is refused (415): a
    browser may send text/plain and forms cross-origin without a preflight."""
    content_type = request.content_type or ""
    if request.body and content_type not in ("application/json", "application/octet-stream", ""):
        raise ApiError(
            "The body must be JSON (Content-Type: application/json).",
            code="unsupported_media_type",
            status_code=415,
        )
    return services.bad_json(request.body)


async def _prepared_generation(
    request: HttpRequest, call: services.RelayCall, *, stream: bool
) -> services.Generation:
    generation = await services.generation_prepare(
        caller=call.caller,
        data=_json_body(request),
        request_id=call.request_id,
        stream=stream,
    )
    call.preset = generation.preset
    return generation


@relay_route(f"{PREFIX}/generate", "flash", "generate", scope=Scope.GENERATE, spends_credits=True)
async def generate(request: HttpRequest, call: services.RelayCall) -> Any:
    generation = await _prepared_generation(request, call, stream=False)
    if call.caller.is_test_mode:
        return Answer(services.simulated_timepoint(generation), headers=SIMULATED)
    await services.generation_admit(generation)
    return await services.generation_run_sync(generation, call)


@relay_route(
    f"{PREFIX}/generate/stream",
    "flash",
    "generate_stream",
    scope=Scope.GENERATE,
    spends_credits=True,
)
async def generate_stream(request: HttpRequest, call: services.RelayCall) -> StreamingHttpResponse:
    generation = await _prepared_generation(request, call, stream=True)
    content_type = "text/event-stream; charset=utf-8"
    if call.caller.is_test_mode:
        response = StreamingHttpResponse(
            services.simulated_stream(generation, call), content_type=content_type
        )
        response["X-Test-Mode"] = SIMULATED["X-Test-Mode"]
    else:
        await services.generation_admit(generation)
        generation.on_done = partial(
            timepoints.streamed_owner_record,
            caller=call.caller,
            payload=generation.payload,
            request_id=call.request_id,
        )
        try:
            upstream = await services.generation_open_stream(generation)
        except BaseException:
            await services.generation_release(generation)
            raise
        stream = services.generation_stream(generation, upstream, call, STREAM_EVENT)
        await anext(stream)  # started: its `finally` (cleanup) can now run whatever happens
        response = StreamingHttpResponse(stream, content_type=content_type)
        services.stream_guard(stream, response, call)
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"
    return response


# --- Timepoints


@relay_route(
    f"{PREFIX}/timepoints/{{id}}/visibility", "flash", "timepoint_visibility", scope=Scope.PUBLISH
)
async def timepoint_visibility(request: HttpRequest, call: services.RelayCall, **_: Any) -> Any:
    timepoint_id = paths.flash_timepoint_id(request, f"{PREFIX}/timepoints/", "/visibility")
    serializer = VisibilityInputSerializer(data=_json_body(request))
    serializer.is_valid(raise_exception=True)
    body = await timepoints.timepoint_set_visibility(
        caller=call.caller,
        timepoint_id=timepoint_id,
        visibility=serializer.validated_data["visibility"],
    )
    return body


# --- Clockchain


def _moment_list_params(request: HttpRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "limit": _int_param(request, "limit", 20, 1, 100),
        "offset": _int_param(request, "offset", 0, 0, 1_000_000),
    }
    for name in ("year_from", "year_to"):
        if name in request.GET:
            params[name] = _int_param(request, name, 0, -100_000, 100_000)
    if "min_confidence" in request.GET:
        try:
            confidence = float(request.GET["min_confidence"])
        except ValueError:
            raise BadRequest("min_confidence must be a number.", code="invalid_request")
        if not 0 <= confidence <= 1:
            raise BadRequest("min_confidence must be between 0 and 1.", code="invalid_request")
        params["min_confidence"] = confidence
    for name in ("entity", "q"):
        text = _str_param(request, name)
        if text:
            params[name] = text
    sort = request.GET.get("sort")
    if sort is not None:  # any value but `year` means newest first upstream
        if sort not in ("year", "newest"):
            raise BadRequest("sort must be year or newest.", code="invalid_request")
        params["sort"] = sort
    status = request.GET.get("status")
    if status is not None:
        if status not in ("proposed", "challenged", "verified", "alternative"):
            raise BadRequest("Unknown status.", code="invalid_request")
        params["status"] = status
    return params


@relay_route(f"{PREFIX}/moments", "clockchain", "moment_list", scope=Scope.READ)
async def moment_list(request: HttpRequest, call: services.RelayCall) -> Any:
    return await selectors.moment_list(_moment_list_params(request))


@relay_route(f"{PREFIX}/moments/{{path}}", "clockchain", "moment_detail", scope=Scope.READ)
async def moment_detail(request: HttpRequest, call: services.RelayCall, **_: Any) -> Any:
    path = paths.clockchain_path(request, f"{PREFIX}/moments/")
    flash_user_id = str(call.caller.user.flash_user_id or "")
    return await selectors.moment_detail(path=path, flash_user_id=flash_user_id)


@relay_route(f"{PREFIX}/browse", "clockchain", "browse_root", scope=Scope.READ)
async def browse_root(request: HttpRequest, call: services.RelayCall) -> Any:
    return await selectors.browse("")


@relay_route(f"{PREFIX}/browse/{{path}}", "clockchain", "browse_path", scope=Scope.READ)
async def browse_path(request: HttpRequest, call: services.RelayCall, **_: Any) -> Any:
    path = paths.clockchain_path(request, f"{PREFIX}/browse/")
    return await selectors.browse(path)


@relay_route(f"{PREFIX}/today", "clockchain", "today", scope=Scope.READ)
async def today(request: HttpRequest, call: services.RelayCall) -> Any:
    return await selectors.today()


@relay_route(f"{PREFIX}/random", "clockchain", "random", scope=Scope.READ)
async def random_moment(request: HttpRequest, call: services.RelayCall) -> Any:
    return await selectors.random_moment()


@relay_route(f"{PREFIX}/search", "clockchain", "search", scope=Scope.READ)
async def search(request: HttpRequest, call: services.RelayCall) -> Any:
    q = _str_param(request, "q")
    if not q or not q.strip():
        raise BadRequest("q is required.", code="invalid_request")
    return await selectors.search(q)


@relay_route(f"{PREFIX}/graph/neighbors/{{path}}", "clockchain", "neighbors", scope=Scope.READ)
async def neighbors(request: HttpRequest, call: services.RelayCall, **_: Any) -> Any:
    path = paths.clockchain_path(request, f"{PREFIX}/graph/neighbors/")
    flash_user_id = str(call.caller.user.flash_user_id or "")
    return await selectors.moment_neighbors(path=path, flash_user_id=flash_user_id)


@relay_route(f"{PREFIX}/stats", "clockchain", "stats", scope=Scope.READ)
async def stats(request: HttpRequest, call: services.RelayCall) -> Any:
    return await selectors.stats()


async def invalid_path(request: HttpRequest, **_: Any) -> HttpResponse:
    return api_error_response(InvalidPath())


# --- Staff


class CreditsReconcileApi(APIView):
    """Staff: what the gateway metered for a user next to Flash's credit ledger."""

    permission_classes = [IsAdminUser]

    @RECONCILE_SCHEMA
    def get(self, request: Request, user_id: int) -> Response:
        cursor = str(request.query_params.get("cursor", ""))
        return Response(selectors.credits_reconcile(user_id=user_id, cursor=cursor))
