"""Clockchain: the only module that knows Clockchain's URL and service key (upstreams.md §B)."""

from __future__ import annotations

from typing import Any, TypedDict

from django.conf import settings

from timepoint_billing.errors import ApiError, UpstreamError
from upstreams.http import ResponseLike, Upstream, UpstreamResponse, error_from_upstream

CLOCKCHAIN = Upstream("Clockchain", "CLOCKCHAIN_URL")


class BrowseItem(TypedDict):
    """One entry of `GET /browse[/{path}]` (upstreams.md B): the next path segment under the
    prefix and how many public nodes lie below it."""

    segment: str
    count: int


def browse_items_from(body: Any) -> list[BrowseItem]:
    """Clockchain's browse answer as `BrowseItem`s, checked here once; another shape is
    Clockchain's error (502), never a count of zero or a 500 deep in the visibility check."""
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise UpstreamError("Clockchain returned an invalid answer.")
    result: list[BrowseItem] = []
    for item in items:
        segment = item.get("segment") if isinstance(item, dict) else None
        count = item.get("count") if isinstance(item, dict) else None
        if not isinstance(segment, str) or not isinstance(count, int) or isinstance(count, bool):
            raise UpstreamError("Clockchain returned an invalid answer.")
        result.append(BrowseItem(segment=segment, count=count))
    return result


async def acall(
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    with_key: bool = True,
    read_timeout: float | None = None,
) -> UpstreamResponse:
    """A read on the shared pool. `with_key=False` for public detail reads: with the key,
    Clockchain returns private moments to anyone (pitfall 18)."""
    request_headers = {"X-Service-Key": settings.CLOCKCHAIN_SERVICE_KEY} if with_key else {}
    return await CLOCKCHAIN.arequest(
        method, path, headers=request_headers, params=params, read_timeout=read_timeout
    )


async def health() -> dict[str, Any]:
    response = await acall(
        "GET", "/health", with_key=False, read_timeout=settings.HEALTH_CHECK_TIMEOUT
    )
    if response.status_code != 200:
        raise UpstreamError(f"Clockchain /health answered {response.status_code}.")
    return dict(response.json())


def error_from_clockchain(response: ResponseLike) -> ApiError:
    """A refused key (403), a missing one (422) or an unset one (503) is our configuration, not
    the client's request: 502. 404 and 429 (→ 503 Retry-After) keep their meaning."""
    if response.status_code in (401, 403, 422):
        return UpstreamError("Clockchain refused the gateway's request.")
    return error_from_upstream("Clockchain", response)
