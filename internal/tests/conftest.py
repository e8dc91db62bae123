"""Internal API fixtures: a service credential from the environment (settings) and one from the
admin (database); the registry starts empty for every test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

MCP_SECRET = "mcp-service-secret-0123456789abcdefghijklmnop"


@pytest.fixture(autouse=True)
def _fresh_registry(settings: Any) -> Iterator[None]:
    from internal.services import registry_forget

    settings.INTERNAL_SERVICE_KEYS = [("mcp", MCP_SECRET)]
    registry_forget()
    yield
    registry_forget()


@pytest.fixture
def service_headers() -> dict[str, Any]:
    """Django test-client kwargs of the `mcp` service (configured from the environment)."""
    return {"HTTP_X_SERVICE_KEY": MCP_SECRET}
