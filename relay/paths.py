"""Path parameters, validated segment by segment before any upstream call (issue 5, pitfall 2).

The upstreams' own alphabets need no percent-encoding, so any `%` in the path *as it arrived*
is refused rather than decoded: `%2e%2e`, `%2F`, `%252e` and friends never reach an upstream in
any form. On ASGI the raw path is `scope["raw_path"]` (Django's `request.path` is already decoded);
where a server does not provide it, the decoded path is checked with the same rules.
"""

from __future__ import annotations

import re

from django.http import HttpRequest

from timepoint_billing.errors import InvalidPath

# Flash timepoint ids are UUIDs.
FLASH_TIMEPOINT_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# Clockchain ids: `/{year}/{month}/{day}/{time}/{country}/{region}/{city}/{slug}`, lowercase ASCII
# slugs (`-44` for a negative year). Shorter ids exist (ingest accepts any), so 1-12 segments.
CLOCKCHAIN_SEGMENT = re.compile(r"[a-z0-9_-]{1,128}")
CLOCKCHAIN_MAX_SEGMENTS = 12
MAX_RAW_PATH = 1024


def raw_request_path(request: HttpRequest) -> str:
    """The request path exactly as it arrived (percent-encoding kept), without the query."""
    scope = getattr(request, "scope", None)
    raw = scope.get("raw_path") if isinstance(scope, dict) else None
    if isinstance(raw, bytes | bytearray) and raw:
        return bytes(raw).decode("latin-1").split("?", 1)[0]
    return request.path


def path_parameter(request: HttpRequest, prefix: str, suffix: str = "") -> str:
    """The part of the raw path between `prefix` (e.g. `/api/v1/moments/`) and `suffix`.

    Raises InvalidPath when the raw path does not have that exact shape, which is what happens
    when a route's fixed part arrived percent-encoded or the parameter holds `?`, `#`, `%`, `\\`,
    `;` or control characters.
    """
    raw = raw_request_path(request)
    if len(raw) > MAX_RAW_PATH:
        raise InvalidPath("The path is too long.")
    if any(ch in raw for ch in "%\\;?#") or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in raw):
        raise InvalidPath()
    if (
        not raw.startswith(prefix)
        or not raw.endswith(suffix)
        or len(raw) <= len(prefix) + len(suffix)
    ):
        raise InvalidPath()
    return raw[len(prefix) : len(raw) - len(suffix)] if suffix else raw[len(prefix) :]


def flash_timepoint_id(request: HttpRequest, prefix: str, suffix: str = "") -> str:
    value = path_parameter(request, prefix, suffix)
    if not FLASH_TIMEPOINT_ID.fullmatch(value):
        raise InvalidPath("A timepoint id is a UUID.")
    return value.lower()


def clockchain_path(request: HttpRequest, prefix: str) -> str:
    """A Clockchain node path, canonical (`/a/b/c`, no empty, dot or trailing segments)."""
    value = path_parameter(request, prefix)
    segments = value.split("/")
    if len(segments) > CLOCKCHAIN_MAX_SEGMENTS:
        raise InvalidPath("The moment path has too many segments.")
    for segment in segments:
        if not CLOCKCHAIN_SEGMENT.fullmatch(segment):
            raise InvalidPath()
    return "/" + "/".join(segments)
