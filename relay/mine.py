"""A person's "mine" list: Flash's list of their timepoints merged with the gateway's streamed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from relay.models import StreamedTimepoint
from relay.services import flash_user_ensure
from relay.timepoints import flash_ok
from timepoint_billing.callers import Caller
from timepoint_billing.db import run_db
from timepoint_billing.errors import BadRequest, UpstreamError
from upstreams import flash

# "Mine" merges Flash's list with the gateway's streamed timepoints; the merge reads both lists
# up to the end of the requested page, so the depth is bounded.
MINE_MAX_DEPTH = 10_000
FLASH_PAGE_MAX = 100


def _when(value: Any) -> datetime:
    """A created_at for ordering (Flash's has no offset on SQLite: UTC)."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _streamed_page(
    *, user_id: int, status: str | None, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    rows = StreamedTimepoint.objects.filter(user_id=user_id, deleted_at__isnull=True)
    if status:
        rows = rows.filter(status=status)
    total = rows.count()
    items = [
        {
            "id": row.timepoint_id,
            "query": row.query,
            "slug": row.slug,
            "status": row.status,
            "year": row.year,
            "location": row.location,
            "has_image": row.has_image,
            "created_at": row.created_at.isoformat(),
        }
        for row in rows.order_by("-created_at", "-id")[:limit]
    ]
    return total, items


async def _flash_list(
    user_id: str, *, page: int, page_size: int, status: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"page": page, "page_size": page_size}
    if status:
        params["status"] = status
    body = flash_ok(
        await flash.acall("GET", "/api/v1/users/me/timepoints", user_id=user_id, params=params)
    )
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise UpstreamError("Flash returned an invalid answer.")
    return body


async def _flash_window(
    user_id: str, *, start: int, end: int, status: str | None
) -> tuple[int, list[dict[str, Any]]]:
    """Flash's items at positions [start, end) of its list (in pages of 100) and its total."""
    first, last = start // FLASH_PAGE_MAX + 1, (end - 1) // FLASH_PAGE_MAX + 1
    pages = await asyncio.gather(
        *(
            _flash_list(user_id, page=number, page_size=FLASH_PAGE_MAX, status=status)
            for number in range(first, last + 1)
        )
    )
    items = [item for body in pages for item in body["items"] if isinstance(item, dict)]
    skip = start - (first - 1) * FLASH_PAGE_MAX
    return int(pages[0].get("total") or 0), items[skip : skip + end - start]


async def timepoint_list_mine(
    *, caller: Caller, page: int, page_size: int, status: str | None
) -> dict[str, Any]:
    """The caller's timepoints, newest first, deleted ones left out: what Flash owns for them
    (sync and async generations) and the streamed ones the gateway recorded.

    Both lists are sorted newest first, so page `p` of the merge lies within the first
    `p * page_size` items of each; of Flash's list only the part that can land on the page is
    read: the items before position `offset - k` (k = streamed items read) all come before it."""
    user_id = await flash_user_ensure(caller)
    offset = (page - 1) * page_size
    end = offset + page_size
    if end > MINE_MAX_DEPTH:
        raise BadRequest(
            f"page * page_size may be at most {MINE_MAX_DEPTH}.", code="invalid_request"
        )
    streamed_total, streamed = await run_db(
        _streamed_page, user_id=caller.user.pk, status=status, limit=end
    )
    if streamed_total == 0:
        body = await _flash_list(user_id, page=page, page_size=page_size, status=status)
        total = int(body.get("total") or 0)
        return {"items": body["items"], "total": total, "page": page, "page_size": page_size}

    start = max(0, offset - len(streamed)) if streamed_total <= end else 0
    flash_total, window = await _flash_window(user_id, start=start, end=end, status=status)
    # On equal times Flash's item counts as the newer one: the two orders never tie.
    flash_keys = [(_when(item.get("created_at")), 1) for item in window]
    streamed_keys = [(_when(item.get("created_at")), 0) for item in streamed]
    placed: list[tuple[int, dict[str, Any]]] = []
    for index, (item, key) in enumerate(zip(window, flash_keys, strict=True)):
        position = start + index + sum(1 for other in streamed_keys if other > key)
        placed.append((position, item))
    for index, (item, key) in enumerate(zip(streamed, streamed_keys, strict=True)):
        position = index + start + sum(1 for other in flash_keys if other > key)
        placed.append((position, item))
    placed.sort(key=lambda pair: pair[0])
    items = [item for position, item in placed if offset <= position < end]
    return {
        "items": items,
        "total": flash_total + streamed_total,
        "page": page,
        "page_size": page_size,
    }
