"""Shared OpenAPI pieces: the one error body every route documents.

Usage in any app::

    from timepoint_billing.openapi import error_responses

    @extend_schema(responses={200: OutputSerializer, **error_responses(401, 429, 503)})
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request is invalid.",
    401: "Missing, invalid, expired or revoked credentials (`WWW-Authenticate: Bearer`).",
    402: "Not enough credits.",
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
