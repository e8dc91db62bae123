"""Typed errors and the one place that turns them into `{"detail", "code"}` JSON.

Services raise `ApiError` subclasses; DRF views get them through `exception_handler`, plain Django
(async relay) views through `ApiErrorMiddleware`, and anything Django itself renders
(404s from the resolver, 405s, 500s, even with DEBUG on) on any path but the browser pages is
rewritten as JSON (`answers_json`).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, permission_denied, server_error
from rest_framework import exceptions as drf_exceptions

from timepoint_billing.routes import BROWSER_PREFIXES

logger = logging.getLogger("timepoint.errors")


def answers_json(path: str) -> bool:
    """True for every path but the browser pages (the admin, the portal, the browser login):
    an error anywhere else (an unknown path such as `/internal/x` or `/foo`, a wrong method)
    answers `{"detail", "code"}` JSON, never Django's HTML page."""
    return not path.startswith(BROWSER_PREFIXES)


class ApiError(drf_exceptions.APIException):
    """Base of every error a client may see. `extra` adds fields next to detail and code."""

    status_code = 400
    default_code = "bad_request"
    default_detail = "Bad request."

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.detail_text = str(detail or self.default_detail)
        self.code = code or self.default_code
        if status_code is not None:
            self.status_code = status_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail_text, self.code)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail_text, "code": self.code, **self.extra}


class BadRequest(ApiError):
    pass


class InvalidPath(ApiError):
    default_code = "invalid_path"
    default_detail = "The path contains a segment that is not allowed."


class Unauthenticated(ApiError):
    status_code = 401
    default_code = "not_authenticated"
    default_detail = "Authentication credentials were not provided or are invalid."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="api"'})
        super().__init__(detail, **kwargs)


class InsufficientCredits(ApiError):
    status_code = 402
    default_code = "insufficient_credits"
    default_detail = "Not enough credits for this operation."


class Forbidden(ApiError):
    status_code = 403
    default_code = "permission_denied"
    default_detail = "You do not have permission to perform this action."


class ScopeRequired(Forbidden):
    """An API key called a route outside its scopes (refused before any upstream call, limiter
    charge or credit hold)."""

    default_code = "scope_required"

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"This API key does not have the `{scope}` scope this call needs; its owner can add it "
            "in the portal or with PATCH /api/v1/keys/{id}.",
            extra={"scope": scope},
        )


class KeyNotAllowedHere(Forbidden):
    default_code = "key_not_allowed_here"
    default_detail = "This API key may not be used from this origin or address."


class BudgetExhausted(ApiError):
    status_code = 402
    default_code = "budget_exhausted"
    default_detail = "This API key's monthly credit budget does not cover this generation."


class PaymentDeclined(ApiError):
    status_code = 402
    default_code = "payment_declined"
    default_detail = "The payment was declined."


class NotFound(ApiError):
    status_code = 404
    default_code = "not_found"
    default_detail = "Not found."


class Conflict(ApiError):
    status_code = 409
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


class PayloadTooLarge(ApiError):
    status_code = 413
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


class RateLimited(ApiError):
    status_code = 429
    default_code = "rate_limited"
    default_detail = "Rate limit exceeded."

    def __init__(self, detail: str | None = None, *, retry_after: int = 1, **kwargs: Any) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after)))}
        headers.update(kwargs.pop("headers", None) or {})
        super().__init__(detail, headers=headers, **kwargs)


class ServiceUnavailable(ApiError):
    status_code = 503
    default_code = "service_unavailable"
    default_detail = "The service is temporarily unavailable."

    def __init__(self, detail: str | None = None, *, retry_after: int = 5, **kwargs: Any) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after)))}
        headers.update(kwargs.pop("headers", None) or {})
        super().__init__(detail, headers=headers, **kwargs)


class FlashUnavailable(ServiceUnavailable):
    default_code = "flash_unavailable"
    default_detail = "The credit service is temporarily unavailable."


class FlashAccountRefused(ApiError):
    """Flash answered the account resolve with a refusal that a retry will not change."""

    status_code = 409
    default_code = "credit_account_refused"
    default_detail = (
        "The credit service refused to open an account for this user; retrying will not help. "
        "Contact support."
    )


class UpstreamUnavailable(ApiError):
    status_code = 502
    default_code = "upstream_unavailable"
    default_detail = "The upstream service could not be reached."


class UpstreamError(ApiError):
    status_code = 502
    default_code = "upstream_error"
    default_detail = "The upstream service returned an invalid response."


class UpstreamTimeout(ApiError):
    status_code = 504
    default_code = "upstream_timeout"
    default_detail = "The upstream service did not answer in time."


def error_response(
    status: int, detail: str, code: str, headers: dict[str, str] | None = None, **extra: Any
) -> JsonResponse:
    response = JsonResponse({"detail": detail, "code": code, **extra}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    if status in (429, 503) and "Retry-After" not in response:
        response["Retry-After"] = "5"
    return response


def api_error_response(exc: ApiError) -> JsonResponse:
    body = exc.body()
    return error_response(
        exc.status_code, body.pop("detail"), body.pop("code"), exc.headers, **body
    )


def _validation_detail(data: Any) -> str:
    """A short human sentence from DRF's nested validation errors."""
    if isinstance(data, dict):
        for field, value in data.items():
            inner = _validation_detail(value)
            return inner if field == "non_field_errors" else f"{field}: {inner}"
    if isinstance(data, list) and data:
        return _validation_detail(data[0])
    return str(data) if data else "Invalid input."


_DRF_CODES: dict[type[Exception], tuple[int, str]] = {
    drf_exceptions.ParseError: (400, "invalid_json"),
    drf_exceptions.NotAuthenticated: (401, "not_authenticated"),
    drf_exceptions.AuthenticationFailed: (401, "authentication_failed"),
    drf_exceptions.PermissionDenied: (403, "permission_denied"),
    drf_exceptions.NotFound: (404, "not_found"),
    drf_exceptions.MethodNotAllowed: (405, "method_not_allowed"),
    drf_exceptions.NotAcceptable: (406, "not_acceptable"),
    drf_exceptions.UnsupportedMediaType: (415, "unsupported_media_type"),
    drf_exceptions.Throttled: (429, "rate_limited"),
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """DRF's EXCEPTION_HANDLER: every error becomes `{"detail", "code"}` with the right status."""
    # Not at the top: importing rest_framework.views loads the DEFAULT_AUTHENTICATION_CLASSES
    # (accounts.authentication), which imports this module: DRF's cycle, not one of ours.
    from rest_framework.views import set_rollback

    set_rollback()
    request = context.get("request")
    return exception_to_response(exc, request)


def exception_to_response(exc: Exception, request: Any = None) -> JsonResponse:
    if isinstance(exc, ApiError):
        return api_error_response(exc)
    if isinstance(exc, drf_exceptions.ValidationError):
        return error_response(
            400, _validation_detail(exc.detail), "invalid_request", errors=exc.detail
        )
    for exc_type, (status, code) in _DRF_CODES.items():
        if isinstance(exc, exc_type):
            headers: dict[str, str] = {}
            if isinstance(exc, drf_exceptions.APIException):
                if status == 401:
                    headers["WWW-Authenticate"] = 'Bearer realm="api"'
                wait = getattr(exc, "wait", None)
                if wait:
                    headers["Retry-After"] = str(int(wait) + 1)
            detail = exc.detail if isinstance(exc, drf_exceptions.APIException) else str(exc)
            return error_response(status, str(detail), code, headers)
    if isinstance(exc, Http404):
        return error_response(404, "Not found.", "not_found")
    if isinstance(exc, PermissionDenied):
        return error_response(
            403, "You do not have permission to perform this action.", "permission_denied"
        )
    if isinstance(exc, RequestDataTooBig):
        return error_response(413, "The request body is too large.", "payload_too_large")
    if isinstance(exc, SuspiciousOperation):
        return error_response(400, "The request was malformed.", "bad_request")
    if isinstance(exc, DatabaseError) and _database_timed_out(exc):
        logger.warning("database time limit hit", extra={"path": getattr(request, "path", None)})
        return error_response(
            503, "The database did not answer in time; try again.", "database_timeout"
        )
    if isinstance(exc, RecursionError) and _raised_by_json_decoder(exc):
        # DRF's JSONParser lets `json.load`'s RecursionError through (`[[[[…` 100 000 deep).
        return error_response(400, "The body is nested too deeply.", "invalid_json")
    logger.exception(
        "unhandled error", extra={"path": getattr(request, "path", None)}, exc_info=exc
    )
    return error_response(500, "Internal server error.", "internal_error")


# PostgreSQL's SQLSTATEs for statement_timeout (query_canceled) and lock_timeout
# (lock_not_available), set for web requests in settings.py.
_TIMEOUT_SQLSTATES = frozenset({"57014", "55P03"})


def _database_timed_out(exc: DatabaseError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) in _TIMEOUT_SQLSTATES


def _raised_by_json_decoder(exc: BaseException) -> bool:
    """True when the traceback runs through the json module (parsing a request body)."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("json"):
            return True
        tb = tb.tb_next
    return False


class ApiErrorMiddleware:
    """Turns exceptions raised by plain (non-DRF) views on API paths into JSON errors."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, ApiError) or answers_json(request.path):
            return exception_to_response(exc, request)
        return None


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if answers_json(request.path):
        return error_response(404, "Not found.", "not_found")
    return page_not_found(request, exception or Http404())


def handler500(request: HttpRequest) -> HttpResponse:
    if answers_json(request.path):
        return error_response(500, "Internal server error.", "internal_error")
    return server_error(request)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(400, "The request was malformed.", "bad_request")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if answers_json(request.path):
        return error_response(
            403, "You do not have permission to perform this action.", "permission_denied"
        )
    return permission_denied(request, exception or PermissionDenied())
