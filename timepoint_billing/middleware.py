"""Request context: request id, body-size limit, one JSON log line per request, and a last guard
that no HTML error page leaves on an API path (Django renders its own 404/500 pages in DEBUG)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, StreamingHttpResponse
from django.middleware import clickjacking, common, csrf, security
from whitenoise.middleware import WhiteNoiseMiddleware

from timepoint_billing.asgi_handler import BODY_TOO_LARGE
from timepoint_billing.dual_middleware import SyncAsyncMiddleware
from timepoint_billing.errors import answers_json, error_response
from timepoint_billing.logs import request_id_var
from timepoint_billing.metrics import observe_request
from timepoint_billing.routes import JSON_API_PREFIXES

request_log = logging.getLogger("timepoint.request")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _request_id(request: HttpRequest) -> str:
    supplied = request.headers.get("X-Request-ID", "")
    return supplied if _REQUEST_ID_RE.match(supplied) else uuid.uuid4().hex


def _too_large(request: HttpRequest) -> HttpResponse | None:
    limit = settings.MAX_REQUEST_BODY_BYTES
    # The ASGI handler stopped reading the body at the limit (any method: it was never read).
    if getattr(request, "scope", {}).get(BODY_TOO_LARGE):
        return error_response(413, f"The request body exceeds {limit} bytes.", "payload_too_large")
    if request.method not in _BODY_METHODS:
        return None
    raw_length = request.META.get("CONTENT_LENGTH") or ""
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


def request_start(request: HttpRequest) -> HttpResponse | None:
    """The request id, and the answer to a body over the limit (None: go on)."""
    rid = _request_id(request)
    request.request_id = rid  # type: ignore[attr-defined]
    request_id_var.set(rid)
    return _too_large(request)


def request_finish(
    request: HttpRequest, response: HttpResponse | StreamingHttpResponse, started: float
) -> Any:
    """The last word on every response: no HTML error on a JSON path, the request id header,
    the metrics and the one log line."""
    path = request.path
    if answers_json(path) and response.status_code >= 400:
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
            replacement = error_response(status, detail, code)
            # The headers still hold (Allow on a 405, Retry-After, CORS, Vary); only the ones
            # that describe the old body go.
            for name, value in response.items():
                if not name.lower().startswith("content-"):
                    replacement[name] = value
            response = replacement
    rid = getattr(request, "request_id", "")
    response["X-Request-ID"] = rid
    seconds = time.perf_counter() - started
    observe_request(request, response.status_code, seconds)
    request_log.info(
        {
            "event": "request",
            "method": request.method,
            "path": path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            "caller": getattr(request, "caller_label", None),
            "request_id": rid,
        }
    )
    return response


class RequestContextMiddleware(SyncAsyncMiddleware):
    def call(self, request: HttpRequest) -> Any:
        started = time.perf_counter()
        response = request_start(request) or self.get_response(request)
        return request_finish(request, response, started)

    async def acall(self, request: HttpRequest) -> Any:
        started = time.perf_counter()
        response = request_start(request) or await self.get_response(request)
        return request_finish(request, response, started)


# --- Django's middleware without the thread hops on the JSON API (issue 9)
#
# Django runs a `MiddlewareMixin` middleware in async mode by hopping to a thread for
# `process_request` and again for `process_response` (and once more for a sync `process_view`),
# each hop a new per-request executor thread: seven such middlewares made the relay ~50x slower
# than its upstream. Two fixes, chosen per middleware:
# - hooks that only read the request and set headers (security, common, clickjacking) run inline
#   on the event loop: they do no I/O, so there is nothing to move off the loop;
# - sessions, CSRF, auth and messages serve the browser pages (admin, portal, OIDC login). The
#   JSON API under /api/v1/ and /health never reads a session or a login cookie (callers present
#   bearer credentials or X-API-Key; every view there is csrf-exempt), so there they are skipped.
#   Elsewhere they run exactly as Django runs them.


def is_json_api(request: HttpRequest) -> bool:
    """Bearer-authenticated JSON paths: no session, no login cookie, no CSRF."""
    return request.path_info.startswith(JSON_API_PREFIXES)


class InlineHooksMixin:
    """Run a middleware's (I/O-free) hooks on the event loop instead of in a thread."""

    get_response: Any

    async def __acall__(self, request: HttpRequest) -> Any:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class BrowserOnlyMixin:
    """Skip a browser-only middleware on the JSON API (sync and async alike, so the test client
    sees what production does); elsewhere Django's behaviour, thread hops included."""

    get_response: Any
    async_mode: bool

    def __call__(self, request: HttpRequest) -> Any:
        if is_json_api(request):
            return self.get_response(request)
        return super().__call__(request)  # type: ignore[misc]


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    pass


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    pass


class SessionMiddleware(BrowserOnlyMixin, sessions.SessionMiddleware):
    pass


class AuthenticationMiddleware(BrowserOnlyMixin, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(BrowserOnlyMixin, messages.MessageMiddleware):
    pass


class CsrfViewMiddleware(BrowserOnlyMixin, csrf.CsrfViewMiddleware):
    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        if self.async_mode:
            # The handler would wrap a sync process_view in a thread hop for every request.
            self.process_view = self._aprocess_view  # type: ignore[method-assign,assignment]

    def process_view(
        self, request: HttpRequest, callback: Any, callback_args: Any, callback_kwargs: Any
    ) -> HttpResponseForbidden | None:
        if is_json_api(request):
            return None
        return super().process_view(request, callback, callback_args, callback_kwargs)

    async def _aprocess_view(
        self, request: HttpRequest, callback: Any, callback_args: Any, callback_kwargs: Any
    ) -> HttpResponseForbidden | None:
        if is_json_api(request):
            return None
        check = sync_to_async(csrf.CsrfViewMiddleware.process_view, thread_sensitive=True)
        return await check(self, request, callback, callback_args, callback_kwargs)


# --- Static files (issue 15)


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise's middleware, async-capable so it costs the JSON API no thread hop.

    WhiteNoise's own middleware is sync-only: in the ASGI stack Django would wrap everything below
    it in a thread hop per request, undoing the work above. The lookup is a dict hit on the
    request path (the files under STATIC_ROOT, read once at start), so it runs inline. A hit is
    answered with the file read whole: Django would consume WhiteNoise's sync file iterator in a
    thread anyway (with a warning), the files are at most a few hundred kB compressed, and hashed
    names are cached by browsers for a year."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        answer = static_file.get_response(request.method, request.META)
        body = b""
        if answer.file is not None:
            with answer.file as handle:
                body = handle.read()
        response = HttpResponse(body, status=int(answer.status))
        del response["Content-Type"]  # WhiteNoise's headers carry the right one
        for name, value in answer.headers:
            response[name] = value
        return response
