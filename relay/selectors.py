"""What the relay reads: Clockchain's graph, filtered to what a caller may see, and the staff
reconcile of metered credits against Flash's ledger.

Clockchain answers the gateway as a trusted client (upstreams.md B4, pitfalls 18-21): with the
service key its detail route returns private moments, neighbours and detail edges are never
filtered, `created_by` exposes user ids and `/stats` counts private nodes. So:

- public detail reads go out *without* the key; a non-public moment is shown only to the Flash user
  in its `created_by` (read with the key, never cached);
- edges and neighbours are kept only when their other end is public. Visibility of a path is read
  from `/browse` (public-only counts, not rate-limited): a path is public iff the count of public
  nodes under its parent's segment exceeds the count strictly below the path itself;
- `created_by`, `proposed_by` and `challenged_by` are stripped everywhere;
- `/stats` is computed from the public browse index instead of Clockchain's leaky `/stats`.

All gateway traffic shares one Clockchain rate-limit bucket (pitfall 21), so caller-independent
answers are cached for `CLOCKCHAIN_CACHE_SECONDS` (default 10 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.db.models import Count, Sum

from accounts.models import User
from metering.models import UsageRecord
from timepoint_billing import async_cache
from timepoint_billing.errors import BadRequest, NotFound, UpstreamError, UpstreamTimeout
from upstreams import clockchain, flash
from upstreams.flash import LedgerEntry

ACTOR_FIELDS = ("created_by", "proposed_by", "challenged_by")


def clockchain_cache_seconds() -> float:
    return float(settings.CLOCKCHAIN_CACHE_SECONDS)


def _cache_key(path: str, params: dict[str, Any] | None, with_key: bool) -> str:
    query = urlencode(sorted((params or {}).items()))
    digest = hashlib.sha256(f"{with_key}|{path}?{query}".encode()).hexdigest()[:40]
    return f"relay:cc:{digest}"


async def clockchain_get(
    path: str,
    *,
    params: dict[str, Any] | None = None,
    with_key: bool = True,
    cached: bool = True,
    not_found_ok: bool = False,
) -> Any:
    """One Clockchain GET, decoded. 2xx JSON only; errors are mapped (404 kept, 429 → 503).

    `not_found_ok`: a 404 returns None instead of raising."""
    # With the cache off (CLOCKCHAIN_CACHE_SECONDS=0) no cache round trip at all. On, the
    # cache is awaited on the event loop (`async_cache`), never a blocking call.
    key = _cache_key(path, params, with_key) if cached and clockchain_cache_seconds() > 0 else ""
    if key:
        hit = await async_cache.get(key)
        if hit is not None:
            return hit
    response = await clockchain.acall("GET", path, params=params, with_key=with_key)
    if response.status_code == 404 and not_found_ok:
        return None
    if response.status_code != 200:
        raise clockchain.error_from_clockchain(response)
    try:
        body = response.json()
    except ValueError as exc:
        raise UpstreamError("Clockchain returned an invalid answer.") from exc
    if key:
        await async_cache.set(key, body, clockchain_cache_seconds())
    return body


def strip_actors(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ACTOR_FIELDS}


async def _browse_counts(segments: list[str]) -> dict[str, int]:
    path = "/api/v1/browse" + ("/" + "/".join(segments) if segments else "")
    body = await clockchain_get(path)
    return {item["segment"]: item["count"] for item in clockchain.browse_items_from(body)}


async def is_public(path: str) -> bool:
    """Whether a public moment has exactly this path (see the module docstring)."""
    segments = [s for s in path.strip("/").split("/") if s]
    if not segments:
        return False
    parent, below = await asyncio.gather(_browse_counts(segments[:-1]), _browse_counts(segments))
    return parent.get(segments[-1], 0) > sum(below.values())


async def public_paths(paths: list[str]) -> set[str]:
    unique = sorted(set(paths))
    flags = await asyncio.gather(*(is_public(p) for p in unique))
    return {p for p, public in zip(unique, flags, strict=True) if public}


async def _owned_node(path: str, flash_user_id: str) -> dict[str, Any] | None:
    """A non-public node read with the key, returned only to the Flash user who created it."""
    if not flash_user_id:
        return None
    node = await clockchain_get(
        f"/api/v1/moments{path}", with_key=True, cached=False, not_found_ok=True
    )
    if (
        isinstance(node, dict)
        and node.get("visibility") != "public"
        and node.get("created_by") == flash_user_id
    ):
        return node
    return None


async def moment_detail(*, path: str, flash_user_id: str) -> dict[str, Any]:
    node = await clockchain_get(f"/api/v1/moments{path}", with_key=False, not_found_ok=True)
    if not isinstance(node, dict):
        node = await _owned_node(path, flash_user_id)
    if node is None:
        raise NotFound("Moment not found.", code="not_found")
    edges = [e for e in node.get("edges") or [] if isinstance(e, dict)]
    visible = await public_paths([str(e.get("target")) for e in edges])
    result = strip_actors(node)
    result["edges"] = [e for e in edges if e.get("target") in visible]
    return result


async def moment_neighbors(*, path: str, flash_user_id: str) -> list[dict[str, Any]]:
    # Clockchain ignores the node's own visibility here (pitfall 19): check it first, and answer
    # a private node exactly as a missing one.
    if not await is_public(path) and await _owned_node(path, flash_user_id) is None:
        raise NotFound("Node not found.", code="not_found")
    body = await clockchain_get(f"/api/v1/graph/neighbors{path}")
    items = [i for i in body if isinstance(i, dict)] if isinstance(body, list) else []
    visible = await public_paths([str(i.get("path")) for i in items])
    return [strip_actors(i) for i in items if i.get("path") in visible]


async def moment_list(params: dict[str, Any]) -> Any:
    return await clockchain_get("/api/v1/moments", params=params, with_key=False)


async def browse(path: str) -> Any:
    return await clockchain_get("/api/v1/browse" + path)


async def today() -> dict[str, Any]:
    body = await clockchain_get("/api/v1/today")
    if not isinstance(body, dict):
        raise UpstreamError("Clockchain returned an invalid answer.")
    events = [
        strip_actors(e)
        for e in body.get("events") or []
        if isinstance(e, dict) and e.get("visibility") == "public"
    ]
    return {**body, "events": events}


async def random_moment() -> dict[str, Any]:
    for _ in range(3):
        body = await clockchain_get("/api/v1/random", cached=False, not_found_ok=True)
        if body is None:
            break
        if isinstance(body, dict) and body.get("visibility") == "public":
            return strip_actors(body)
    raise NotFound("No public moments available.", code="not_found")


async def search(q: str) -> list[dict[str, Any]]:
    body = await clockchain_get("/api/v1/search", params={"q": q})
    return [strip_actors(i) for i in body if isinstance(i, dict)] if isinstance(body, list) else []


async def stats() -> dict[str, Any]:
    """Public-only figures from the browse index (Clockchain's `/stats` counts private nodes)."""
    roots = await _browse_counts([])
    years = []
    for segment in roots:
        try:
            years.append(int(segment))
        except ValueError:
            continue
    return {
        "total_nodes": sum(roots.values()),
        "date_range": {
            "min_year": min(years) if years else None,
            "max_year": max(years) if years else None,
        },
    }


# --- Staff: metered credits against Flash's ledger


RECONCILE_PAGE = 100  # Flash's largest history page
_CURSOR_SALT = "relay.credits_reconcile"


def _ledger_row_mark(row: LedgerEntry) -> str:
    """Identifies a ledger row well enough to notice that the ledger moved under a cursor."""
    fields = (
        row["created_at"],
        row["amount"],
        row["balance_after"],
        row["type"],
        row["description"],
    )
    return hashlib.sha256(repr(tuple(fields)).encode()).hexdigest()[:16]


def _reconcile_cursor_load(cursor: str, user_id: int) -> dict[str, Any]:
    fresh = {"offset": 0, "charged": 0, "refunded": 0, "last": ""}
    if not cursor:
        return fresh
    try:
        state = signing.loads(cursor, salt=_CURSOR_SALT, max_age=settings.RECONCILE_CURSOR_SECONDS)
    except signing.BadSignature:
        raise BadRequest("The cursor is invalid or expired; start again.", code="invalid_cursor")
    if not isinstance(state, dict) or state.get("user") != user_id:
        raise BadRequest("The cursor belongs to another reconcile.", code="invalid_cursor")
    return {k: state[k] for k in fresh}


def credits_reconcile(*, user_id: int, cursor: str = "") -> dict[str, Any]:
    """Per user: credits the gateway metered for generations vs. what Flash's ledger charged and
    refunded. A non-zero `difference` is what staff look into (lost updates, pitfall 11).

    Bounded: one call pages through Flash's ledger (newest first) for at most
    RECONCILE_BUDGET_SECONDS in total, each page's timeout cut to what is left. A long ledger
    takes several calls: an unfinished one answers `complete: false` with `next_cursor` (signed:
    where it stopped and the sums so far), and the next call passes it back to resume there.
    Flash adds rows at the top, which shifts every offset, so a resumed call first re-reads the
    last row counted; when it has moved, the walk starts over rather than count a row twice."""
    user = User.objects.filter(pk=user_id).first()
    if user is None or not user.flash_user_id:
        raise NotFound("No such user with a Flash account.")
    state = _reconcile_cursor_load(cursor, user.pk)
    metered = UsageRecord.objects.filter(user=user, credits_spent__gt=0).aggregate(
        credits=Sum("credits_spent"), generations=Count("id")
    )
    budget = float(settings.RECONCILE_BUDGET_SECONDS)
    deadline = time.monotonic() + budget
    complete = False
    while not complete:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        resuming = bool(state["last"])
        start = state["offset"] - 1 if resuming else state["offset"]
        try:
            page = flash.credit_history(
                flash_user_id=user.flash_user_id,
                limit=RECONCILE_PAGE,
                offset=start,
                read_timeout=min(left, float(settings.UPSTREAM_READ_TIMEOUT)),
            )
        except UpstreamTimeout:
            if left >= float(settings.UPSTREAM_READ_TIMEOUT):
                raise  # Flash is slow, not our budget short: the usual 504
            break  # the budget ran out during this page: answer what we have, resumable
        if resuming:
            if not page or _ledger_row_mark(page[0]) != state["last"]:
                state = {"offset": 0, "charged": 0, "refunded": 0, "last": ""}
                continue
            rows = page[1:]
        else:
            rows = page
        for row in rows:
            amount = row["amount"]
            if row["type"] == "generation" and amount < 0:
                state["charged"] += -amount
            elif row["type"] == "refund" and amount > 0:
                state["refunded"] += amount
        state["offset"] += len(rows)
        if rows:
            state["last"] = _ledger_row_mark(rows[-1])
        complete = len(page) < RECONCILE_PAGE
    try:
        balance: int | None = flash.balance(flash_user_id=user.flash_user_id)["balance"]
    except UpstreamError:  # the report still shows the ledger side
        balance = None
    metered_credits = int(metered["credits"] or 0)
    charged, refunded = int(state["charged"]), int(state["refunded"])
    return {
        "user_id": user.pk,
        "flash_user_id": user.flash_user_id,
        "metered_credits": metered_credits,
        "metered_generations": int(metered["generations"] or 0),
        "flash_charged": charged,
        "flash_refunded": refunded,
        "flash_net_spent": charged - refunded,
        "difference": metered_credits - (charged - refunded) if complete else None,
        "flash_balance": balance,
        "complete": complete,
        "ledger_rows_read": int(state["offset"]),
        "next_cursor": None
        if complete
        else signing.dumps({"user": user.pk, **state}, salt=_CURSOR_SALT),
    }
