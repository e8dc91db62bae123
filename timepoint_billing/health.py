"""Health checks. `/health` touches only the database so Railway never restarts the gateway
because an upstream is down; `/health/ready` (or `/health?deep=1`) checks every dependency. The
deep check calls Flash and Clockchain, so in production it answers only staff or a monitor with
HEALTH_CHECK_TOKEN (anyone else could make the gateway call its upstreams at will)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from django_redis import get_redis_connection

from accounts.authentication import aauthenticate
from timepoint_billing.db import run_db
from timepoint_billing.errors import Forbidden, api_error_response
from upstreams import clockchain, flash


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


def _redis_ok() -> bool:
    try:
        return bool(get_redis_connection("default").ping())
    except Exception:
        return False


async def _check(coro: Any) -> dict[str, Any]:
    try:
        await asyncio.wait_for(coro, timeout=settings.HEALTH_CHECK_TIMEOUT)
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}


@require_GET
async def health(request: HttpRequest) -> JsonResponse:
    if request.GET.get("deep") in ("1", "true"):
        return await health_ready(request)
    database = await run_db(_database_ok)
    body = {"status": "healthy" if database else "unhealthy", "version": settings.VERSION}
    response = JsonResponse(body, status=200 if database else 503)
    if not database:
        response["Retry-After"] = "5"
    return response


async def _may_see_deep_health(request: HttpRequest) -> bool:
    if not settings.IS_PRODUCTION:
        return True
    token = request.headers.get("X-Health-Token", "")
    if settings.HEALTH_CHECK_TOKEN and hmac.compare_digest(
        token.encode(), settings.HEALTH_CHECK_TOKEN.encode()
    ):
        return True
    if "Authorization" not in request.headers and "X-API-Key" not in request.headers:
        return False
    caller = await aauthenticate(request)  # bad credentials: 401, counted as a failed login
    return bool(caller.user.is_staff)


@require_GET
async def health_ready(request: HttpRequest) -> JsonResponse:
    if not await _may_see_deep_health(request):
        return api_error_response(
            Forbidden("The deep health check is for staff and monitors with the health token.")
        )
    database, redis = await asyncio.gather(
        run_db(_database_ok),
        run_db(_redis_ok) if settings.REDIS_URL else asyncio.sleep(0, result=True),
    )
    flash_check, clockchain_check = await asyncio.gather(
        _check(flash.health()), _check(clockchain.health())
    )
    checks: dict[str, Any] = {
        "database": {"ok": database},
        "redis": {"ok": redis} if settings.REDIS_URL else {"ok": True, "configured": False},
        "flash": flash_check,
        "clockchain": clockchain_check,
    }
    ready = all(check["ok"] for check in checks.values())
    response = JsonResponse(
        {
            "status": "ready" if ready else "unavailable",
            "version": settings.VERSION,
            "checks": checks,
        },
        status=200 if ready else 503,
    )
    if not ready:
        response["Retry-After"] = "5"
    return response
