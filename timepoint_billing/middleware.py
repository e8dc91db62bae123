"""Request context: request id, body-size limit, one JSON log line per request, and a last guard
that no HTML error page leaves on an API path (Django renders its own 404/500 pages in DEBUG)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from timepoint_billing.errors import API_PREFIXES, error_response
from timepoint_billing.logs import request_id_var

request_log = logging.getLogger("timepoint.request")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _request_id(request: HttpRequest) -> str:
    supplied = request.headers.get("X-Request-ID", "")
    return supplied if _REQUEST_ID_RE.match(supplied) else uuid.uuid4().hex


def _too_large(request: HttpRequest) -> HttpResponse | None:
    if request.method not in _BODY_METHODS:
        return None
    raw_length = request.META.get("CONTENT_LENGTH") or ""
    limit = settings.MAX_REQUEST_BODY_BYTES
    if raw_length:
        try:
            length = int(raw_length)
        except ValueError:
            return error_response(400, "Content-Length is not a number.", "bad_request")
        if length > limit:
            return error_response(
                413, f"The request body exceeds {limit} bytes.", "payload_too_large"
            )
    return None


def _finish(
    request: HttpRequest, response: HttpResponse | StreamingHttpResponse, started: float
) -> Any:
    path = request.path
    if path.startswith(API_PREFIXES) and response.status_code >= 400:
        content_type = response.get("Content-Type", "")
        if not content_type.startswith(("application/json", "application/problem+json")):
            # Django's own HTML error pages (resolver 404, DEBUG technical pages) never leave.
            status = response.status_code
            code = {404: "not_found", 405: "method_not_allowed", 403: "permission_denied"}.get(
                status, "internal_error" if status >= 500 else "bad_request"
            )
            detail = {404: "Not found.", 405: "Method not allowed."}.get(
                status, "Internal server error." if status >= 500 else "The request was rejected."
            )
            response = error_response(status, detail, code)
    rid = getattr(request, "request_id", "")
    response["X-Request-ID"] = rid
    request_log.info(
        {
            "event": "request",
            "method": request.method,
            "path": path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "caller": getattr(request, "caller_label", None),
            "request_id": rid,
        }
    )
    return response


class RequestContextMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _start(self, request: HttpRequest) -> HttpResponse | None:
        rid = _request_id(request)
        request.request_id = rid  # type: ignore[attr-defined]
        request_id_var.set(rid)
        return _too_large(request)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        started = time.perf_counter()
        response = self._start(request) or self.get_response(request)
        return _finish(request, response, started)

    async def __acall__(self, request: HttpRequest) -> Any:
        started = time.perf_counter()
        response = self._start(request) or await self.get_response(request)
        return _finish(request, response, started)
