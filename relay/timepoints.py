"""A person's own timepoints: read (by id or slug), characters, delete, visibility, and the owner
of streamed timepoints ("mine", the list, is `relay.mine`).

Flash's privacy gaps the gateway closes here (upstreams.md A5, pitfalls 5, 10, 14):

- Flash answers someone else's private timepoint with 403 "This timepoint is private", which
  confirms the id exists: the gateway answers 404, exactly as for an unknown id. Its mutations
  answer 403 to any non-owner; the gateway answers 404 there too (nothing of yours has that id).
- Soft-deleted timepoints are still served by id, slug and characters: the gateway answers 404.
- A mutation always carries the caller's `X-User-Id`: without one Flash skips its owner check.
  The one exception is a streamed timepoint whose owner the gateway recorded (below): Flash gives
  it no owner, so only a system call can delete it, and the gateway sends one only after checking
  that the caller is the recorded owner.
- Streamed timepoints are saved by Flash with no owner and as public, whatever was asked. The
  gateway records the caller and the requested visibility from the stream's `done` event
  (`StreamedTimepoint`) and enforces them on every route here. Flash's copy stays public: Flash
  cannot hold a private timepoint without an owner that its owner could still read (its visibility
  check needs `user_id`), and Flash is reachable only through the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.utils import timezone

from relay import async_generation
from relay.models import StreamedTimepoint, Visibility
from relay.paths import FLASH_TIMEPOINT_ID
from relay.services import flash_user_ensure
from timepoint_billing.callers import Caller
from timepoint_billing.db import row_insert, run_db
from timepoint_billing.errors import ApiError, NotFound, UpstreamError
from upstreams import flash
from upstreams.http import UpstreamResponse

logger = logging.getLogger("timepoint.relay")

STATUSES = ("pending", "processing", "completed", "failed")


def not_found() -> NotFound:
    return NotFound("Timepoint not found.", code="not_found")


def _decode(response: UpstreamResponse) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamError("Flash returned an invalid answer.") from exc


def access_error(response: UpstreamResponse) -> ApiError:
    """Flash's answer to a timepoint route, with "not yours" told apart from nothing: a 403 from
    a handler (`{"error", "detail"}`; its edge middleware's 403 has no `detail`) → 404."""
    if response.status_code == 403:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "detail" in body:
            return not_found()
    if response.status_code == 404:
        return not_found()
    return flash.error_from_flash(response)


def flash_ok(response: UpstreamResponse) -> Any:
    if response.status_code != 200:
        raise access_error(response)
    return _decode(response)


# --- The gateway's records of streamed timepoints


def streamed_get(timepoint_id: str) -> StreamedTimepoint | None:
    return StreamedTimepoint.objects.filter(timepoint_id=timepoint_id).first()


def _records(timepoint_id: str) -> tuple[StreamedTimepoint | None, bool]:
    """The streamed record, and whether an async generation of it is still to be settled."""
    return streamed_get(timepoint_id), async_generation.async_generation_running(timepoint_id)


def visible_to(record: StreamedTimepoint | None, caller: Caller) -> bool:
    if record is None:
        return True  # Flash's own rules apply
    if record.deleted_at is not None:
        return False
    return record.visibility == Visibility.PUBLIC or record.user_id == caller.user.pk


def done_payload(event: dict[str, Any]) -> dict[str, Any] | None:
    """The `data` of a Flash `done` event for a saved timepoint, None for any other event."""
    if event.get("event") != "done":
        return None
    payload = event.get("data")
    if not isinstance(payload, dict) or payload.get("saved") is False:
        return None
    timepoint_id = payload.get("timepoint_id")
    if not isinstance(timepoint_id, str) or not flash_id_ok(timepoint_id):
        return None
    return payload


def flash_id_ok(value: str) -> bool:
    return bool(FLASH_TIMEPOINT_ID.fullmatch(value))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def streamed_record(
    *, user_id: int, visibility: str, query: str, request_id: str, done: dict[str, Any]
) -> None:
    """Record who a streamed timepoint belongs to (idempotent on the timepoint id: a record
    already there is kept as it is)."""
    location = done.get("location")
    # One INSERT … ON CONFLICT DO NOTHING in autocommit, not get_or_create's SELECT and
    # BEGIN/INSERT/COMMIT, and without the ORM's query compilation: every streamed generation
    # waits for it before its `done` (issue 17).
    row_insert(
        StreamedTimepoint,
        ignore_conflicts=True,
        timepoint_id=str(done["timepoint_id"]).lower(),
        user_id=user_id,
        visibility=visibility,
        query=query[:500],
        slug=str(done.get("slug") or "")[:255],
        status=str(done.get("status") or "completed")[:16],
        year=_int_or_none(done.get("year")),
        location=location[:255] if isinstance(location, str) else None,
        has_image=done.get("has_image") is True,
        request_id=request_id[:64],
    )


async def streamed_owner_record(
    event: dict[str, Any], *, caller: Caller, payload: dict[str, Any], request_id: str
) -> None:
    """Called with each terminal stream event before it reaches the client: a `done` event of a
    saved timepoint records its owner, so "mine" lists it as soon as the client sees `done`."""
    done = done_payload(event)
    if done is None:
        return
    try:
        await run_db(
            streamed_record,
            user_id=caller.user.pk,
            visibility=payload.get("visibility") or Visibility.PUBLIC,
            query=str(payload.get("query") or ""),
            request_id=request_id,
            done=done,
        )
    except Exception:
        # The timepoint exists in Flash either way; without the record it stays ownerless and
        # public (as Flash made it), which is what the client was told streams are by default.
        logger.exception(
            "streamed timepoint owner not recorded",
            extra={"request_id": request_id, "timepoint_id": done.get("timepoint_id")},
        )


# --- Reads


def _apply_record(body: dict[str, Any], record: StreamedTimepoint | None) -> dict[str, Any]:
    if record is not None:
        # Flash says public; the gateway's record holds what the owner asked for.
        body["visibility"] = record.visibility
        if record.visibility == Visibility.PRIVATE:
            body["share_url"] = None
    return body


async def _read(caller: Caller, flash_path: str, params: dict[str, Any]) -> dict[str, Any]:
    user_id = await flash_user_ensure(caller)
    body = flash_ok(await flash.acall("GET", flash_path, user_id=user_id, params=params))
    if not isinstance(body, dict) or body.get("is_deleted"):
        # Flash still serves soft-deleted timepoints (pitfall 14).
        raise not_found()
    timepoint_id = str(body.get("id") or "").lower()
    record, running = (
        await run_db(_records, timepoint_id) if flash_id_ok(timepoint_id) else (None, False)
    )
    if not visible_to(record, caller):
        raise not_found()
    if running and body.get("status") in async_generation.FINAL_STATUSES:
        try:
            await run_db(
                async_generation.async_generation_settle,
                timepoint_id=timepoint_id,
                status=str(body["status"]),
            )
        except Exception:  # the worker settles it on its next pass
            logger.exception("async generation not settled", extra={"timepoint_id": timepoint_id})
    return _apply_record(body, record)


async def timepoint_read(
    *, caller: Caller, timepoint_id: str, full: bool, include_image: bool
) -> dict[str, Any]:
    """One timepoint, by id: the caller's own, or a public one; anything else is 404."""
    params = {"full": str(full).lower(), "include_image": str(include_image).lower()}
    return await _read(caller, f"/api/v1/timepoints/{timepoint_id}", params)


async def timepoint_read_by_slug(*, caller: Caller, slug: str, full: bool) -> dict[str, Any]:
    """One timepoint, by its share slug, under the same rules as by id."""
    return await _read(caller, f"/api/v1/timepoints/slug/{slug}", {"full": str(full).lower()})


async def timepoint_characters(*, caller: Caller, timepoint_id: str) -> dict[str, Any]:
    """The characters of a timepoint the caller may read. Flash's characters route serves
    soft-deleted timepoints, so the timepoint itself is read alongside (in parallel)."""
    user_id = await flash_user_ensure(caller)
    readable, characters = await asyncio.gather(
        timepoint_read(caller=caller, timepoint_id=timepoint_id, full=False, include_image=False),
        flash.acall("GET", f"/api/v1/timepoints/{timepoint_id}/characters", user_id=user_id),
        return_exceptions=True,
    )
    if isinstance(readable, BaseException):
        raise readable
    if isinstance(characters, BaseException):
        raise characters
    if characters.status_code == 404:
        raise NotFound(
            "This timepoint has no characters yet (its generation may still be running).",
            code="characters_not_ready",
        )
    body = flash_ok(characters)
    if not isinstance(body, dict) or not isinstance(body.get("characters"), list):
        raise UpstreamError("Flash returned an invalid answer.")
    return body


# --- Mutations: owner only


def _streamed_mark_deleted(timepoint_id: str, permanent: bool) -> None:
    if permanent:
        StreamedTimepoint.objects.filter(timepoint_id=timepoint_id).delete()
    else:
        StreamedTimepoint.objects.filter(timepoint_id=timepoint_id, deleted_at=None).update(
            deleted_at=timezone.now()
        )


def _streamed_set_visibility(timepoint_id: str, visibility: str) -> None:
    StreamedTimepoint.objects.filter(timepoint_id=timepoint_id).update(visibility=visibility)


async def _owned_streamed(caller: Caller, timepoint_id: str) -> StreamedTimepoint | None:
    """The gateway's record when the timepoint was streamed; 404 unless the caller owns it."""
    record = await run_db(streamed_get, timepoint_id)
    if record is not None and record.user_id != caller.user.pk:
        raise not_found()
    return record


async def timepoint_delete(*, caller: Caller, timepoint_id: str, permanent: bool) -> dict[str, Any]:
    """Delete one of the caller's timepoints (soft by default). Never an anonymous call to Flash,
    except for a streamed timepoint the gateway recorded as the caller's (the module docstring)."""
    user_id = await flash_user_ensure(caller)
    path = f"/api/v1/timepoints/{timepoint_id}"
    params = {"permanent": str(permanent).lower()}
    record = await _owned_streamed(caller, timepoint_id)
    if record is None:
        response = await flash.acall("DELETE", path, user_id=user_id, params=params)
    else:
        if record.deleted_at is not None and not permanent:
            raise not_found()
        response = await flash.acall("DELETE", path, user_id=None, params=params)
        if response.status_code == 404:
            # Gone from Flash already (a permanent delete whose answer was lost): forget it too.
            await run_db(_streamed_mark_deleted, timepoint_id, True)
        elif response.status_code == 200:
            await run_db(_streamed_mark_deleted, timepoint_id, permanent)
    body = flash_ok(response)
    if not isinstance(body, dict) or body.get("deleted") is not True:
        raise UpstreamError("Flash returned an invalid answer.")
    logger.info(
        {
            "event": "timepoint_deleted",
            "timepoint_id": timepoint_id,
            "permanent": permanent,
            "user": caller.user.pk,
            "streamed": record is not None,
        }
    )
    return {"id": timepoint_id, "deleted": True, "permanent": permanent}


async def timepoint_set_visibility(
    *, caller: Caller, timepoint_id: str, visibility: str
) -> dict[str, Any]:
    """Publish or unpublish one of the caller's timepoints. A streamed one changes in the
    gateway's record only (Flash's copy stays public, see the module docstring)."""
    user_id = await flash_user_ensure(caller)
    record = await _owned_streamed(caller, timepoint_id)
    if record is None:
        # Always with the caller's X-User-Id: without it Flash skips the owner check (pitfall 5).
        response = await flash.acall(
            "PATCH",
            f"/api/v1/timepoints/{timepoint_id}/visibility",
            user_id=user_id,
            json={"visibility": visibility},
        )
        body = flash_ok(response)
        if not isinstance(body, dict):
            raise UpstreamError("Flash returned an invalid answer.")
        if body.get("is_deleted"):
            raise not_found()
        return body
    if record.deleted_at is not None:
        raise not_found()
    await run_db(_streamed_set_visibility, timepoint_id, visibility)
    return await timepoint_read(
        caller=caller, timepoint_id=timepoint_id, full=False, include_image=False
    )
