"""Pooled HTTP clients to the upstreams and the one mapping of their failures to our errors.

One async client per upstream and event loop (a process normally has one loop; tests create many,
and an httpx pool cannot outlive its loop), and one sync client per upstream and process for the
service calls made from sync code (the grant worker, DRF views).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
from django.conf import settings

from timepoint_billing.errors import (
    ApiError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# What a call to an upstream can raise when the connection fails. AttributeError: under uvloop
# (uvicorn, gunicorn's UvicornWorker) a connection reset right after connect leaves the transport
# without a socket, and anyio's `getpeername()` on it fails inside httpcore; that was a 500.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, AttributeError)

# Headers an upstream must never hand to a client.
UPSTREAM_RESPONSE_HEADERS_DROPPED = frozenset(
    {
        "server",
        "set-cookie",
        "location",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "date",
        "content-encoding",
        "x-request-id",
    }
)


def timeout(read: float | None = None, *, total: float | None = None) -> httpx.Timeout:
    read_timeout = read if read is not None else settings.UPSTREAM_READ_TIMEOUT
    return (
        httpx.Timeout(
            connect=settings.UPSTREAM_CONNECT_TIMEOUT,
            read=read_timeout,
            write=read_timeout,
            pool=settings.UPSTREAM_POOL_TIMEOUT,
        )
        if total is None
        else httpx.Timeout(
            total, connect=settings.UPSTREAM_CONNECT_TIMEOUT, pool=settings.UPSTREAM_POOL_TIMEOUT
        )
    )


class Upstream:
    """Connection pools for one upstream service."""

    def __init__(self, name: str, base_url_setting: str) -> None:
        self.name = name
        self.base_url_setting = base_url_setting
        self._async: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._sync: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return str(getattr(settings, self.base_url_setting))

    def _limits(self) -> httpx.Limits:
        # Few idle connections kept: httpcore polls every idle connection's socket on every
        # request, so a large idle pool costs more CPU than the occasional new connection.
        return httpx.Limits(
            max_connections=settings.UPSTREAM_POOL_SIZE,
            max_keepalive_connections=min(
                settings.UPSTREAM_KEEPALIVE_CONNECTIONS, settings.UPSTREAM_POOL_SIZE
            ),
            keepalive_expiry=30,
        )

    def async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None or client.is_closed or client.base_url != httpx.URL(self.base_url):
            client = httpx.AsyncClient(
                base_url=self.base_url,
                limits=self._limits(),
                timeout=timeout(),
                follow_redirects=False,  # an upstream redirect is never followed (signatures)
                trust_env=False,
            )
            with self._lock:
                # Drop pools whose loop has gone away; they can no longer be used or closed.
                for old_loop in [lp for lp in self._async if lp.is_closed()]:
                    del self._async[old_loop]
                self._async[loop] = client
        return client

    def sync_client(self) -> httpx.Client:
        with self._lock:
            if self._sync is None or self._sync.base_url != httpx.URL(self.base_url):
                self._sync = httpx.Client(
                    base_url=self.base_url,
                    limits=self._limits(),
                    timeout=timeout(),
                    follow_redirects=False,
                    trust_env=False,
                )
            return self._sync

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._async.pop(loop, None)
        if client is not None:
            await client.aclose()

    def map_transport_error(self, exc: BaseException) -> ApiError:
        """Transport failures, mapped once: refused/reset → 502, timeout → 504, pool full → 503."""
        if isinstance(exc, httpx.PoolTimeout):
            return ServiceUnavailable(
                f"Too many requests in flight to {self.name}; retry shortly.",
                code="upstream_busy",
                retry_after=1,
            )
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"{self.name} did not answer in time.")
        return UpstreamUnavailable(f"{self.name} could not be reached.")


def upstream_error_message(response: httpx.Response) -> str:
    """The upstream's own message, from any of its error shapes (see upstreams.md §0)."""
    try:
        body: Any = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, list) and value:
                first = value[0]
                if isinstance(first, dict):
                    loc = ".".join(str(p) for p in first.get("loc", [])[1:])
                    msg = str(first.get("msg", "invalid value"))
                    return f"{loc}: {msg}" if loc else msg
    return ""


def error_from_upstream(name: str, response: httpx.Response) -> ApiError:
    """An upstream 4xx keeps its status with a normalised body; a 5xx becomes our 502."""
    status = response.status_code
    message = upstream_error_message(response)
    if status == 429:
        # Clockchain sends no Retry-After (pitfall 21); its window is one minute.
        return ServiceUnavailable(
            f"{name} is busy; retry shortly.", code="upstream_rate_limited", retry_after=10
        )
    if status == 504:
        return UpstreamTimeout(f"{name} did not finish in time.")
    if 400 <= status < 500:
        codes = {
            400: "upstream_bad_request",
            401: "upstream_unauthorized",
            402: "insufficient_credits",
            403: "upstream_forbidden",
            404: "not_found",
            408: "upstream_timeout",
            409: "conflict",
            422: "invalid_request",
        }
        return ApiError(
            message or f"{name} rejected the request.",
            code=codes.get(status, "upstream_rejected"),
            status_code=status,
        )
    return UpstreamError(f"{name} failed to handle the request.")
