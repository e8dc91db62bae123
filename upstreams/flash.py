"""Flash: the only module that knows Flash's URL, keys and gateway signature (upstreams.md §A1)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any, TypedDict, TypeGuard

import httpx
from django.conf import settings

from timepoint_billing.errors import (
    ApiError,
    FlashAccountRefused,
    FlashUnavailable,
    InsufficientCredits,
    UpstreamError,
)
from upstreams.http import (
    TRANSPORT_ERRORS,
    ResponseLike,
    Upstream,
    UpstreamResponse,
    UpstreamStream,
    error_from_upstream,
    timeout,
)

logger = logging.getLogger("timepoint.relay")

FLASH = Upstream("Flash", "FLASH_URL")


def sign(method: str, path: str, user_id: str, timestamp: str, secret: str) -> str:
    """`v1=` + hex HMAC-SHA256 over `v1\\nMETHOD\\nPATH\\nUSER\\nTS` (path decoded, no query)."""
    message = "\n".join(["v1", method.upper(), path, user_id, timestamp])
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"v1={digest}"


def headers(
    method: str, path: str, *, user_id: str | None = None, admin: bool = False
) -> dict[str, str]:
    """Trust headers for one Flash call, always signed (unsigned would run as a system call)."""
    timestamp = str(int(time.time()))
    result = {
        "X-Service-Key": settings.FLASH_SERVICE_KEY,
        "X-Gateway-Timestamp": timestamp,
        "X-Gateway-Signature": sign(
            method, path, user_id or "", timestamp, settings.FLASH_GATEWAY_SIGNING_SECRET
        ),
    }
    if user_id:
        result["X-User-Id"] = user_id
    if admin:
        result["X-Admin-Key"] = settings.FLASH_ADMIN_KEY
    return result


def call(
    method: str,
    path: str,
    *,
    user_id: str | None = None,
    admin: bool = False,
    json: Any = None,
    params: dict[str, Any] | None = None,
    read_timeout: float | None = None,
) -> httpx.Response:
    """A synchronous service call to Flash. Transport errors raise our typed errors; the response
    is returned whatever its status so callers can decide (e.g. reconcile a grant)."""
    try:
        return FLASH.sync_client().request(
            method,
            path,
            headers=headers(method, path, user_id=user_id, admin=admin),
            json=json,
            params=params,
            timeout=timeout(read_timeout),
        )
    except TRANSPORT_ERRORS as exc:
        raise FLASH.map_transport_error(exc) from exc


def _request_headers(
    method: str, path: str, user_id: str | None, extra_headers: dict[str, str] | None
) -> dict[str, str]:
    request_headers = dict(extra_headers or {})
    request_headers.update(headers(method, path, user_id=user_id))
    return request_headers


async def acall(
    method: str,
    path: str,
    *,
    user_id: str | None = None,
    json: Any = None,
    content: bytes | None = None,
    params: dict[str, Any] | None = None,
    extra_headers: dict[str, str] | None = None,
    read_timeout: float | None = None,
) -> UpstreamResponse:
    """An async call on the shared pool, its answer read whole."""
    return await FLASH.arequest(
        method,
        path,
        headers=_request_headers(method, path, user_id, extra_headers),
        json=json,
        content=content,
        params=params,
        read_timeout=read_timeout,
    )


async def astream(
    method: str,
    path: str,
    *,
    user_id: str | None = None,
    json: Any = None,
    extra_headers: dict[str, str] | None = None,
    read_timeout: float | None = None,
) -> UpstreamStream:
    """An async call whose body is still arriving (SSE); the caller must close it."""
    return await FLASH.astream(
        method,
        path,
        headers=_request_headers(method, path, user_id, extra_headers),
        json=json,
        read_timeout=read_timeout,
    )


def error_from_flash(response: ResponseLike) -> ApiError:
    """Flash's errors, normalised. Its edge middleware answers `{"error"}` with no `detail` key
    (bad signature or key: our configuration, not the client's fault) → 502; an unknown user is
    an account we failed to resolve → 503; a charge that failed for lack of balance is a 500 on
    Flash's side (pitfall 6) → 402."""
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    message = body.get("error") if isinstance(body, dict) else None
    if status in (401, 403) and isinstance(body, dict) and "detail" not in body:
        logger.error("Flash rejected the gateway's credentials: %s", message)
        return UpstreamError("Flash refused the gateway's request.")
    if status == 404 and isinstance(message, str) and message.startswith("User "):
        return FlashUnavailable("Your credit account is not ready yet; retry shortly.")
    if status == 500 and isinstance(message, str) and message.startswith("Insufficient credits"):
        return InsufficientCredits("Not enough credits for this generation.")
    return error_from_upstream("Flash", response)


# --- The answers the gateway reads, typed and checked here, once (upstreams.md A3)


class CreditBalance(TypedDict):
    """`GET /credits/balance`."""

    balance: int
    lifetime_earned: int
    lifetime_spent: int


class LedgerEntry(TypedDict):
    """One row of `GET /credits/history` (newest first); `created_at` is ISO-8601, without an
    offset when Flash runs on SQLite."""

    amount: int
    balance_after: int
    type: str
    description: str | None
    created_at: str


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_answer() -> UpstreamError:
    return UpstreamError("Flash returned an invalid answer.")


def credit_balance_from(body: Any) -> CreditBalance:
    """Flash's balance answer as a `CreditBalance`; UpstreamError when it does not have that
    shape (a wrong answer is never read as zero credits)."""
    if not isinstance(body, dict):
        raise _bad_answer()
    balance, earned, spent = (body.get(k) for k in ("balance", "lifetime_earned", "lifetime_spent"))
    if not (_is_int(balance) and _is_int(earned) and _is_int(spent)):
        raise _bad_answer()
    return CreditBalance(balance=balance, lifetime_earned=earned, lifetime_spent=spent)


def ledger_entries_from(body: Any) -> list[LedgerEntry]:
    """Flash's history answer (a bare array) as `LedgerEntry`s; UpstreamError otherwise."""
    if not isinstance(body, list):
        raise _bad_answer()
    entries: list[LedgerEntry] = []
    for row in body:
        if not (
            isinstance(row, dict)
            and _is_int(row.get("amount"))
            and _is_int(row.get("balance_after"))
            and isinstance(row.get("type"), str)
            and isinstance(row.get("description"), str | None)
            and isinstance(row.get("created_at"), str)
        ):
            raise _bad_answer()
        entries.append(
            LedgerEntry(
                amount=row["amount"],
                balance_after=row["balance_after"],
                type=row["type"],
                description=row["description"],
                created_at=row["created_at"],
            )
        )
    return entries


def _ok_json(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise error_from_flash(response)
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamError("Flash returned an invalid answer.") from exc


def resolve_user(*, external_id: str, email: str = "", display_name: str = "") -> str:
    """Flash's user id for an Auth0 subject (idempotent on Flash's side). Any failure → 503."""
    try:
        response = call(
            "POST",
            "/api/v1/users/resolve",
            json={
                "external_id": external_id,
                "email": email or None,
                "display_name": display_name or None,
            },
        )
        # A 4xx other than our credentials or a rate limit (a body Flash will never accept, such
        # as an email it refuses) is final: retrying the same resolve gets the same answer.
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 408, 429):
            logger.error("Flash refused to resolve %s: HTTP %s", external_id, response.status_code)
            raise FlashAccountRefused()
        body = _ok_json(response)
        return str(body["user_id"])
    except FlashAccountRefused:
        raise
    except (ApiError, KeyError, TypeError) as exc:
        raise FlashUnavailable(
            "The credit service could not create your account; retry shortly."
        ) from exc


def balance(*, flash_user_id: str, read_timeout: float | None = None) -> CreditBalance:
    response = call(
        "GET", "/api/v1/credits/balance", user_id=flash_user_id, read_timeout=read_timeout
    )
    return credit_balance_from(_ok_json(response))


def credit_history(
    *, flash_user_id: str, limit: int = 100, offset: int = 0, read_timeout: float | None = None
) -> list[LedgerEntry]:
    response = call(
        "GET",
        "/api/v1/credits/history",
        user_id=flash_user_id,
        params={"limit": limit, "offset": offset},
        read_timeout=read_timeout,
    )
    return ledger_entries_from(_ok_json(response))


def admin_grant(
    *, flash_user_id: str, amount: int, transaction_type: str, description: str
) -> httpx.Response:
    """Flash's grant is NOT idempotent: callers go through payments' outbox, never directly."""
    return call(
        "POST",
        "/api/v1/credits/admin/grant",
        admin=True,
        json={
            "user_id": flash_user_id,
            "amount": amount,
            "transaction_type": transaction_type,
            "description": description,
        },
    )


async def health() -> dict[str, Any]:
    response = await FLASH.arequest(
        "GET", "/health", headers={}, read_timeout=settings.HEALTH_CHECK_TIMEOUT
    )
    if response.status_code != 200:
        raise UpstreamError(f"Flash /health answered {response.status_code}.")
    return dict(response.json())
