"""Shared OpenAPI pieces: the one error body every route documents.

Usage in any app::

    from timepoint_billing.openapi import error_responses

    @extend_schema(responses={200: OutputSerializer, **error_responses(401, 429, 503)})
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request is invalid.",
    401: "Missing, invalid, expired or revoked credentials (`WWW-Authenticate: Bearer`).",
    402: "Payment required: not enough credits, a spent key budget, or a declined card (`code`).",
    403: "The caller may not do this.",
    404: "Not found.",
    409: "Conflicts with the current state.",
    413: "The request body is too large.",
    429: "Rate limited; see `Retry-After`.",
    502: "An upstream service returned an invalid answer.",
    503: "A dependency is unavailable; see `Retry-After`.",
    504: "An upstream service did not answer in time.",
}


class ErrorSerializer(serializers.Serializer):
    """The body of every error response: `{"detail": "human sentence", "code": "machine_code"}`."""

    detail = serializers.CharField()
    code = serializers.CharField()


def error_responses(*statuses: int) -> dict[int, Any]:
    """`{status: OpenApiResponse(ErrorSerializer)}` for `@extend_schema(responses=...)`."""
    return {
        status: OpenApiResponse(
            response=ErrorSerializer, description=ERROR_DESCRIPTIONS.get(status, "Error.")
        )
        for status in statuses
    }


# --- Scopes: each operation names the scope an API key needs


def required_scope(view: Any, method: str) -> str | None:
    """The scope `view` declares for `method`: its `required_scope`, a scope or a mapping of
    HTTP method to scope (None: no scope, e.g. a route API keys cannot use at all)."""
    declared = getattr(view, "required_scope", None)
    if isinstance(declared, Mapping):
        return declared.get(method.upper())
    return declared


class GatewayAutoSchema(AutoSchema):
    """drf-spectacular's schema plus the route's scope: `x-required-scope`, a line in the
    description, and the 403 `scope_required` answer."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        scope = required_scope(self.view, self.method)
        if operation is None or scope is None:
            return operation
        operation["x-required-scope"] = scope
        note = (
            f"**Scope:** an API key needs `{scope}` (else 403 `scope_required`); sessions and "
            "Auth0 tokens have every scope."
        )
        operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
        responses = operation.setdefault("responses", {})
        if "403" not in responses and "401" in responses:
            forbidden = copy.deepcopy(responses["401"])
            forbidden["description"] = (
                "The caller may not do this: `scope_required` (the key lacks the scope, named in "
                "`scope`) or `key_not_allowed_here` (an origin or address outside the key's lists)."
            )
            responses["403"] = forbidden
        return operation


# --- Response headers (a drf-spectacular postprocessing hook)
#
# The limiter's headers are set on every limited response by one piece of code (apikeys/limits.py)
# rather than per view, so they are documented the same way: once, for every operation that has a
# caller (its `security` names a scheme), instead of an `OpenApiParameter` on each view.

RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    "X-RateLimit-Limit": {
        "description": "Requests allowed in the binding window (the minute, or the day when "
        "fewer requests remain today than this minute).",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in that window.",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Reset": {
        "description": "When that window resets (Unix time, seconds).",
        "schema": {"type": "integer"},
    },
    "RateLimit-Policy": {
        "description": 'IETF draft field: both windows, e.g. `"minute";q=60;w=60, '
        '"day";q=1000;w=86400`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'IETF draft field: what is left of each window, e.g. `"minute";r=59;t=12, '
        '"day";r=990;t=3600`.',
        "schema": {"type": "string"},
    },
}
RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer"},
}
REQUEST_ID = {
    "description": "The request id: yours when you sent a well-formed `X-Request-ID`, else ours.",
    "schema": {"type": "string"},
}


def _has_caller(operation: dict[str, Any]) -> bool:
    return any(requirement for requirement in operation.get("security", []))


def add_response_headers(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """Every response: `X-Request-ID`; 429 and 503: `Retry-After`; an operation with a caller:
    the rate-limit headers on every answer given after authentication (all but 401)."""
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            limited = path.startswith("/api/v1/") and _has_caller(operation)
            for status, response in operation["responses"].items():
                headers = response.setdefault("headers", {})
                # Copies: a YAML dump would turn shared objects into anchors and aliases.
                headers.setdefault("X-Request-ID", copy.deepcopy(REQUEST_ID))
                if status in ("429", "503"):
                    headers.setdefault("Retry-After", copy.deepcopy(RETRY_AFTER))
                if limited and status != "401":
                    for name, header in RATE_LIMIT_HEADERS.items():
                        headers.setdefault(name, copy.deepcopy(header))
    return result
