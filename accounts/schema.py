"""OpenAPI security schemes for `GatewayAuthentication` (loaded from AccountsConfig.ready)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class GatewayAuthenticationScheme(OpenApiAuthenticationExtension):
    """Three alternatives (any one authenticates): Auth0 JWT, gateway session, API key."""

    target_class = "accounts.authentication.GatewayAuthentication"
    name = ["auth0Jwt", "sessionToken", "apiKey"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        return [{name: []} for name in self.name]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An Auth0 access token (RS256) for this API's audience.",
            },
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "tps_…",
                "description": "A gateway session token from `POST /api/v1/auth/login`.",
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "A developer API key (`tp_live_…` or `tp_test_…`); it is also "
                "accepted as `Authorization: Bearer`.",
            },
        ]
