"""OpenAPI for the internal API: its security scheme, and the hooks that keep its routes out of
the public document and everything else out of its own."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from timepoint_billing.routes import INTERNAL

INTERNAL_PATH_PREFIX = "/" + INTERNAL


class ServiceKeyScheme(OpenApiAuthenticationExtension):
    target_class = "internal.drf.ServiceKeyAuthentication"
    name = "serviceKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-Service-Key",
            "description": "A TIMEPOINT service credential (from INTERNAL_SERVICE_KEYS or the "
            "admin). Never a user's token or key.",
        }


Endpoints = list[tuple[str, str, str, Any]]


def public_paths_only(endpoints: Endpoints, **kwargs: Any) -> Endpoints:
    """PREPROCESSING_HOOKS of the public document: no internal route."""
    return [entry for entry in endpoints if not entry[0].startswith(INTERNAL_PATH_PREFIX)]


def internal_paths_only(endpoints: Endpoints, **kwargs: Any) -> Endpoints:
    """PREPROCESSING_HOOKS of /internal/schema: only internal routes."""
    return [
        entry
        for entry in endpoints
        if entry[0].startswith(INTERNAL_PATH_PREFIX) and not entry[0].endswith("/schema")
    ]
