"""OpenAPI for the relay's plain async views, and the shapes their answers are built from.
(Past 400 lines: one declaration per relayed route, read by the projection; no logic.)

Each route's documented success responses are also what its answer is projected onto
(`answer_projections`): the schema and the answer come from the same serializers.

drf-spectacular only documents DRF views: it keeps a URL pattern whose callback has a `cls` that is
an `APIView` subclass. `document(name)` gives each relay view a schema-only `APIView` (never
instantiated for a request) carrying the `extend_schema` of that route, so every relay route is
in `/api/schema` at its real URL with its upstream's response shape and its error responses, and
no setting or hook is needed. The view itself stays a plain async function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework.views import APIView

from relay import serializers as s
from relay.projection import Projection, projection
from timepoint_billing.openapi import error_responses

COMMON_ERRORS = (401, 429)
FLASH_ERRORS = (*COMMON_ERRORS, 502, 503, 504)
CLOCKCHAIN_ERRORS = (*COMMON_ERRORS, 502, 503, 504)
TAG_CREDITS = "Credits"
TAG_GENERATION = "Generation"
TAG_TIMEPOINTS = "Timepoints"
TAG_CLOCKCHAIN = "Clockchain"

TEST_MODE = (
    "A `tp_test_` key never reaches Flash here and spends nothing: the answer is a simulated, "
    "clearly marked one (`test_mode: true` in the body, `X-Test-Mode: simulated` header), after "
    "the same validation, preset and HD checks as a live key."
)
CHARGING = (
    "Priced from Flash's cost table (`GET /credits/costs`, `generate_<preset>`; presets Flash "
    "does not price cost 5). Before Flash is called the cost is reserved against your balance, "
    "so parallel generations cannot overspend: without enough unreserved credits → 402 "
    "`insufficient_credits` with `balance`, `available` and `cost`."
)

LOST_ANSWER = (
    "When Flash received the generation but its answer was lost (cut connection, timeout, "
    "truncated answer) → 502 (504 for a timeout) `upstream_outcome_unknown` with `request_id`: "
    "the gateway's worker finds out from Flash what became of it; a completed timepoint is in "
    "your timepoints and charged, a failed or unfinished one is refunded exactly once."
)


PRIVACY = (
    "Someone else's private timepoint, and a deleted one, answer 404 exactly like an unknown one."
)


def _path(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.PATH, description=description)


def _query(name: str, kind: Any, description: str, required: bool = False) -> OpenApiParameter:
    return OpenApiParameter(
        name, kind, OpenApiParameter.QUERY, required=required, description=description
    )


MOMENT_PATH = _path(
    "path",
    "A Clockchain moment id without its leading slash, e.g. "
    "`-44/march/15/1030/italy/lazio/rome/assassination-of-julius-caesar`. Segments are "
    "lower-case `[a-z0-9_-]`; percent-encoding, `.`/`..`, empty segments, `\\`, `;` → 400 "
    "`invalid_path`.",
)
TIMEPOINT_ID = _path("id", "A Flash timepoint id (UUID).")

GENERATION_EVENT = PolymorphicProxySerializer(
    component_name="GenerationEvent",
    serializers=s.STREAM_EVENTS,
    resource_type_field_name="event",
)

ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "credits_balance": (
        "GET",
        {
            "tags": [TAG_CREDITS],
            "summary": "Your credit balance (from Flash)",
            "responses": {200: s.BalanceSerializer, **error_responses(*FLASH_ERRORS)},
        },
    ),
    "credits_history": (
        "GET",
        {
            "tags": [TAG_CREDITS],
            "summary": "Your credit ledger, newest first (from Flash)",
            "parameters": [
                _query("limit", int, "1-100, default 20"),
                _query("offset", int, "≥ 0, default 0"),
            ],
            "responses": {
                200: s.HistoryItemSerializer(many=True),
                **error_responses(400, *FLASH_ERRORS),
            },
        },
    ),
    "credits_costs": (
        "GET",
        {
            "tags": [TAG_CREDITS],
            "summary": "Credit cost of each operation (Flash's table, cached for a minute)",
            "responses": {200: s.CostsSerializer, **error_responses(*FLASH_ERRORS)},
        },
    ),
    "generate": (
        "POST",
        {
            "tags": [TAG_GENERATION],
            "summary": "Generate a timepoint and wait for it (Flash generate/sync, ≤ 300 s)",
            "description": (
                f'{CHARGING} A run that Flash reports as `status: "failed"` is refunded by the '
                "gateway (a `refund` grant in Flash's ledger, delivered by the grant worker). "
                f"{LOST_ANSWER} {TEST_MODE}"
            ),
            "request": s.GenerateInputSerializer,
            "responses": {
                200: s.TimepointSerializer,
                **error_responses(400, 402, 403, 404, *FLASH_ERRORS),
            },
        },
    ),
    "generate_stream": (
        "POST",
        {
            "tags": [TAG_GENERATION],
            "summary": "Generate a timepoint as a Server-Sent Events stream (Flash stream)",
            "description": (
                "Flash's events are passed on one by one, each `data: <json>` + a blank line, with "
                "`{event, step, data, progress, error}`: `start`, then `step_complete` / "
                "`step_error`, then `done` (or `error`); each holds only the fields documented "
                "for its name, and an event of another name is not passed on. A `: keep-alive` "
                "comment is sent while "
                "Flash is silent; the stream is cut after the gateway's maximum duration. Errors "
                "before the first event are JSON. The timepoint is yours and gets the requested "
                "`visibility` (the gateway records both from the `done` event, before passing it "
                f"on). {CHARGING} Flash charges the "
                'stream; a stream that ends in `done` with `status: "failed"` or in an `error` '
                "event is refunded. A stream cut short by Flash, the network or the gateway's "
                "duration limit ends with an `error` event whose `data` is "
                '`{"code": "upstream_outcome_unknown", "request_id": …}`: the gateway finds out '
                "from Flash whether the generation completed and refunds it if not. Closing the "
                f"connection early is charged. {TEST_MODE}"
            ),
            "request": s.GenerateInputSerializer,
            "responses": {
                (200, "text/event-stream"): OpenApiResponse(
                    response=GENERATION_EVENT,
                    description="Server-Sent Events: each `data:` line holds one of these",
                ),
                **error_responses(400, 402, 403, 404, *FLASH_ERRORS),
            },
        },
    ),
    "generate_async": (
        "POST",
        {
            "tags": [TAG_GENERATION],
            "summary": "Start a generation and poll it (Flash's asynchronous generate)",
            "description": (
                "Answers 202 at once with the timepoint's `id` (and `Location`/`poll_url`): poll "
                "`GET /timepoints/{id}` until `status` is `completed` or `failed`. The body is the "
                f"one of `POST /generate` (`visibility` applies). {CHARGING} Flash charges when it "
                "accepts; a run that ends `failed` is refunded exactly once (by Flash when its "
                "run raised, otherwise by the gateway: a `refund` grant in Flash's ledger), also "
                "when nobody polls it. A test key gets a simulated answer that cannot be polled."
            ),
            "request": s.GenerateInputSerializer,
            "responses": {
                202: s.AsyncGenerateOutputSerializer,
                200: OpenApiResponse(
                    response=s.AsyncGenerateOutputSerializer,
                    description="A test key's simulated answer (`test_mode: true`).",
                ),
                **error_responses(400, 402, 403, 404, *FLASH_ERRORS),
            },
        },
    ),
    "timepoint_detail": (
        "GET",
        {
            "tags": [TAG_TIMEPOINTS],
            "summary": "One timepoint: yours, or a public one",
            "description": (
                "Poll this after `POST /generate/async` until `status` is `completed` or "
                f"`failed`. {PRIVACY}"
            ),
            "parameters": [
                TIMEPOINT_ID,
                _query("full", bool, "Include scene, characters, dialog…"),
                _query("include_image", bool, "Include `image_base64`"),
            ],
            "responses": {
                200: s.TimepointSerializer,
                **error_responses(400, 404, *FLASH_ERRORS),
            },
        },
    ),
    "timepoint_delete": (
        "DELETE",
        {
            "tags": [TAG_TIMEPOINTS],
            "summary": "Delete your timepoint (owner only; soft unless permanent=true)",
            "description": (
                "A soft delete hides the timepoint everywhere (reads, slug, characters, your "
                "list); `permanent=true` erases it in Flash, also after a soft delete. A "
                "timepoint that is not yours answers 404, whether or not it exiss."
            ),
            "parameters": [
                TIMEPOINT_ID,
                _query("permanent", bool, "Erase instead of hiding (default false)"),
            ],
            "responses": {
                200: s.DeleteOutputSerializer,
                **error_responses(400, 404, *FLASH_ERRORS),
            },
        },
    ),
    "timepoint_list_mine": (
        "GET",
        {
            "tags": [TAG_TIMEPOINTS],
            "summary": "Your timepoints, newest first",
            "description": (
                "Every timepoint you generated (sync, async and streamed), deleted ones left "
                "out; also those whose generation answer was lost on the way to you."
            ),
            "parameters": [
                _query("page", int, "≥ 1, default 1 (page * page_size ≤ 10 000)"),
                _query("page_size", int, "1-100, default 20"),
                _query("status", str, "pending, processing, completed or failed"),
            ],
            "responses": {200: s.MineListSerializer, **error_responses(400, *FLASH_ERRORS)},
        },
    ),
    "timepoint_by_slug": (
        "GET",
        {
            "tags": [TAG_TIMEPOINTS],
            "summary": "One timepoint by its share slug: yours, or a public one",
            "description": PRIVACY,
            "parameters": [
                _path("slug", "The timepoint's slug (lower-case ASCII letters, digits, `_`, `-`)."),
                _query("full", bool, "Include scene, characters, dialog…"),
            ],
            "responses": {
                200: s.TimepointSerializer,
                **error_responses(400, 404, *FLASH_ERRORS),
            },
        },
    ),
    "timepoint_characters": (
        "GET",
        {
            "tags": [TAG_TIMEPOINTS],
            "summary": "The characters of a timepoint (yours, or a public one)",
            "description": (
                "With each character's role-play system prompt. 404 `characters_not_ready` while "
                f"the generation runs or when it failed. {PRIVACY}"
            ),
            "parameters": [TIMEPOINT_ID],
            "responses": {
                200: s.CharactersSerializer,
                **error_responses(400, 404, *FLASH_ERRORS),
            },
        },
    ),
    "timepoint_visibility": (
        "PATCH",
        {
            "tags": [TAG_TIMEPOINTS],
            "summary": "Publish or unpublish your timepoint (owner only)",
            "description": "A timepoint that is not yours answers 404, whether or not it exiss.",
            "parameters": [TIMEPOINT_ID],
            "request": s.VisibilityInputSerializer,
            "responses": {
                200: s.TimepointSerializer,
                **error_responses(400, 404, *FLASH_ERRORS),
            },
        },
    ),
    "moment_list": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "Public moments",
            "parameters": [
                _query("limit", int, "1-100, default 20"),
                _query("offset", int, "≥ 0"),
                _query("year_from", int, "Earliest year"),
                _query("year_to", int, "Latest year"),
                _query("entity", str, "Substring of the name"),
                _query("q", str, "Substring of the name or one-liner"),
                _query("min_confidence", float, "0-1"),
                _query("sort", str, "`year` (default) or `newest`"),
                _query("status", str, "proposed, challenged, verified or alternative"),
            ],
            "responses": {200: s.MomentListSerializer, **error_responses(400, *CLOCKCHAIN_ERRORS)},
        },
    ),
    "moment_detail": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "One moment: public, or private and created by you",
            "description": "Edges are limited to public moments; actor ids are not shown.",
            "parameters": [MOMENT_PATH],
            "responses": {
                200: s.MomentSerializer,
                **error_responses(400, 404, *CLOCKCHAIN_ERRORS),
            },
        },
    ),
    "browse_root": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "Top-level segments with their count of public moments",
            "responses": {200: s.BrowseSerializer, **error_responses(*CLOCKCHAIN_ERRORS)},
        },
    ),
    "browse_path": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "Next segments under a prefix with their count of public moments",
            "parameters": [MOMENT_PATH],
            "responses": {200: s.BrowseSerializer, **error_responses(400, *CLOCKCHAIN_ERRORS)},
        },
    ),
    "today": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "Public moments on today's month and day (UTC)",
            "responses": {200: s.TodaySerializer, **error_responses(*CLOCKCHAIN_ERRORS)},
        },
    ),
    "random": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "A random public moment",
            "responses": {200: s.SummarySerializer, **error_responses(404, *CLOCKCHAIN_ERRORS)},
        },
    ),
    "search": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "Search public moments (at most 20)",
            "parameters": [_query("q", str, "Search text (`%` and `_` are wildcards)", True)],
            "responses": {
                200: s.SearchItemSerializer(many=True),
                **error_responses(400, *CLOCKCHAIN_ERRORS),
            },
        },
    ),
    "neighbors": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "Public moments linked to a moment (both directions)",
            "parameters": [MOMENT_PATH],
            "responses": {
                200: s.NeighborSerializer(many=True),
                **error_responses(400, 404, *CLOCKCHAIN_ERRORS),
            },
        },
    ),
    "stats": (
        "GET",
        {
            "tags": [TAG_CLOCKCHAIN],
            "summary": "Figures about the public graph",
            "description": "Counted over public moments only.",
            "responses": {200: s.StatsSerializer, **error_responses(*CLOCKCHAIN_ERRORS)},
        },
    ),
}


def _schema_view(*names: str) -> type[APIView]:
    attrs: dict[str, Any] = {}
    for name in names:
        method, schema = ROUTES[name]

        def handler(self: APIView, request: Any, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("schema only")  # pragma: no cover

        handler.__doc__ = schema.get("summary", "")
        attrs[method.lower()] = extend_schema(operation_id=f"relay_{name}", **schema)(handler)
    return type(f"Relay{names[0].title().replace('_', '')}Schema", (APIView,), attrs)


def answer_projections(*names: str) -> dict[str, dict[int, Projection]]:
    """Method → success status → the projection its answer is built with, for routes `names`:
    the serializers of the same documented responses the schema shows (errors are the gateway's
    own `{"detail", "code"}` and not projected)."""
    result: dict[str, dict[int, Projection]] = {}
    for name in names:
        method, schema = ROUTES[name]
        for key, response in schema["responses"].items():
            status = key[0] if isinstance(key, tuple) else key
            if 200 <= status < 300:
                shape = response.response if isinstance(response, OpenApiResponse) else response
                result.setdefault(method, {})[status] = projection(shape)
    return result


def document(*names: str) -> Callable[[Any], Any]:
    """Attach the schema of route `names` (one per method of the URL) to a plain view (see the
    module docstring)."""

    def decorator(view: Any) -> Any:
        view.cls = _schema_view(*names)
        # The scope `relay_route` declared, for `timepoint_billing.openapi.GatewayAutoSchema`.
        view.cls.required_scope = getattr(view, "required_scope", None)
        view.initkwargs = {}
        return view

    return decorator


RECONCILE_SCHEMA = extend_schema(
    tags=["Staff"],
    summary="Metered credits next to Flash's credit ledger for one user (staff only)",
    parameters=[
        OpenApiParameter(
            "cursor",
            str,
            description="`next_cursor` of an unfinished reconcile, to resume it",
            required=False,
        )
    ],
    responses={200: s.ReconcileSerializer, **error_responses(400, 401, 403, 404, 502, 503, 504)},
)
