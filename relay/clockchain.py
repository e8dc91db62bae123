"""Clockchain: the only module that knows Clockchain's URL and service key (upstreams.md §B)."""

from __future__ import annotations

from typing import Any

import httpx
from django.conf import settings

from relay.http import Upstream, timeout

CLOCKCHAIN = Upstream("Clockchain", "CLOCKCHAIN_URL")


async def acall(
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    with_key: bool = True,
    read_timeout: float | None = None,
) -> httpx.Response:
    """A read on the shared pool. `with_key=False` for public detail reads: with the key,
    Clockchain returns private moments to anyone (pitfall 18)."""
    client = CLOCKCHAIN.async_client()
    request_headers = {"X-Service-Key": settings.CLOCKCHAIN_SERVICE_KEY} if with_key else {}
    try:
        return await client.request(
            method, path, headers=request_headers, params=params, timeout=timeout(read_timeout)
        )
    except httpx.HTTPError as exc:
        raise CLOCKCHAIN.map_transport_error(exc) from exc


async def health() -> dict[str, Any]:
    client = CLOCKCHAIN.async_client()
    response = await client.get("/health", timeout=settings.HEALTH_CHECK_TIMEOUT)
    response.raise_for_status()
    return dict(response.json())
