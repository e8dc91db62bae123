"""Pooled HTTP clients to the upstreams and the one mapping of their failures to our errors.
(About 400 lines: the async and sync clients share one error mapping and one pool policy.)

The relay's async calls go through aiohttp: one `ClientSession` per upstream and event loop (a
process normally has one loop; tests create many, and a session cannot outlive its loop). It was
chosen over httpx by the benchmark's figures (issue 9): on this machine an httpx `AsyncClient`
spent ~1.2 ms of CPU per small upstream GET, most of it in httpcore's per-request pool
bookkeeping (it polls every idle connection's socket), aiohttp ~0.15 ms. The synchronous
service calls made from sync code (the grant worker, DRF views, first-sight user resolve) keep
one httpx `Client` per upstream and process: they are few and off the hot path.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx
from django.conf import settings

from timepoint_billing import json_codec
from timepoint_billing.errors import (
    ApiError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from timepoint_billing.metrics import UPSTREAM_ERRORS, UPSTREAM_LATENCY

# What a call to an upstream can raise when the connection fails. TimeoutError is
# aiohttp's timeout; OSError a socket error it did not wrap; AttributeError: under uvloop a
# connection reset right after connect can leave a transport without a socket.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
    AttributeError,
)


_closing: set[asyncio.Task[Any]] = set()


class PoolTimeout(Exception):
    """Every pooled connection to the upstream stayed busy for UPSTREAM_POOL_TIMEOUT."""


class ResponseLike(Protocol):
    """What error mapping needs of an answer, sync (httpx) or async (ours)."""

    @property
    def status_code(self) -> int: ...

    def json(self) -> Any: ...


def timeout(read: float | None = None) -> httpx.Timeout:
    """The sync client's timeouts."""
    read_timeout = read if read is not None else settings.UPSTREAM_READ_TIMEOUT
    return httpx.Timeout(
        connect=settings.UPSTREAM_CONNECT_TIMEOUT,
        read=read_timeout,
        write=read_timeout,
        pool=settings.UPSTREAM_POOL_TIMEOUT,
    )


def async_timeout(read: float | None = None, *, whole: bool = True) -> aiohttp.ClientTimeout:
    """One `ClientTimeout` per distinct setting, built once (a call builds none)."""
    return _async_timeout(
        float(read if read is not None else settings.UPSTREAM_READ_TIMEOUT),
        float(settings.UPSTREAM_CONNECT_TIMEOUT),
        whole,
    )


@functools.lru_cache(maxsize=64)
def _async_timeout(read_timeout: float, connect: float, whole: bool) -> aiohttp.ClientTimeout:
    """The async client's timeouts: connect, each read, and for an answer read whole also the
    total (an upstream trickling bytes cannot hold a call past connect + read). A stream has no
    total: the relay bounds a stream's duration itself. Waiting for a pooled connection is
    bounded by our own semaphore (`Upstream._slot`) so that it can be told apart (503, not 504).
    """
    return aiohttp.ClientTimeout(
        total=connect + read_timeout if whole else None,
        connect=connect,
        sock_connect=connect,
        sock_read=read_timeout,
    )


@dataclass
class UpstreamResponse:
    """An upstream's answer, read whole."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not JSON (as httpx does)."""
        return json_codec.loads(self.content)


class UpstreamStream:
    """An upstream's answer whose body is still arriving (SSE). Holds its pooled connection
    and its pool slot until `aclose()`, which the caller must call (it is idempotent)."""

    def __init__(
        self, response: aiohttp.ClientResponse, upstream: Upstream, slot: asyncio.Semaphore
    ) -> None:
        self._response = response
        self._upstream = upstream
        self._slot: asyncio.Semaphore | None = slot
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers
        self.content = b""

    async def aread(self) -> bytes:
        try:
            self.content = await self._response.read()
        except TRANSPORT_ERRORS as exc:
            raise self._upstream.map_transport_error(exc) from exc
        return self.content

    def json(self) -> Any:
        return json_codec.loads(self.content)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """Chunks as they arrive; transport failures raise `UpstreamUnavailable`/`Timeout`."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TRANSPORT_ERRORS as exc:
            raise self._upstream.map_transport_error(exc) from exc

    async def aclose(self) -> None:
        if self._slot is None:
            return
        slot, self._slot = self._slot, None
        # A body not read to its end: close the connection rather than return it to the pool
        # (the upstream stops sending at once, which is what a client that left wants).
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()
        slot.release()


@dataclass
class _Pool:
    """One event loop's session to an upstream, and the slots that bound its connections."""

    config: tuple[str, int]
    session: aiohttp.ClientSession
    slots: asyncio.Semaphore
    closer: AsyncGenerator[None, None]


async def _closed_with_loop(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Started once, then parked: `asyncio.run` (uvicorn's loop, asgiref's per-call loops in
    sync code) closes every live async generator before it closes the loop, which closes the
    session at shutdown, as aiohttp requires, without a hook of our own in each server."""
    try:
        yield
    finally:
        await session.close()


class Upstream:
    """Connection pools for one upstream service."""

    def __init__(self, name: str, base_url_setting: str) -> None:
        self.name = name
        self._latency = UPSTREAM_LATENCY.labels(name.lower())
        self._server_errors = UPSTREAM_ERRORS.labels(name.lower(), "status_5xx")
        for kind in ("timeout", "pool_timeout", "transport"):  # every series from the start
            UPSTREAM_ERRORS.labels(name.lower(), kind)
        self.base_url_setting = base_url_setting
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}
        self._sync: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return str(getattr(settings, self.base_url_setting)).rstrip("/")

    async def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        config = (self.base_url, int(settings.UPSTREAM_POOL_SIZE))
        pool = self._pools.get(loop)
        if pool is not None and pool.config == config and not pool.session.closed:
            return pool
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config[1], keepalive_timeout=30, ttl_dns_cache=60),
            timeout=async_timeout(),
            # Never keep an upstream's cookies: one session serves every caller.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        closer = _closed_with_loop(session)
        await anext(closer)
        fresh = _Pool(config, session, asyncio.Semaphore(config[1]), closer)
        with self._lock:
            # Forget pools whose loop has gone away (their sessions closed with the loop).
            for old_loop in [lp for lp in self._pools if lp.is_closed()]:
                del self._pools[old_loop]
            self._pools[loop] = fresh
        if pool is not None:  # the configuration changed (tests): close the old pool
            closing = loop.create_task(pool.closer.aclose())
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)
        return fresh

    async def _slot(self, slot: asyncio.Semaphore) -> None:
        if not slot.locked():
            # A free slot is taken at once: `wait_for` would wrap the acquire in a task of its
            # own on every call (a third of this method's cost on the relay's path, issue 17).
            await slot.acquire()
            return
        try:
            await asyncio.wait_for(slot.acquire(), settings.UPSTREAM_POOL_TIMEOUT)
        except TimeoutError as exc:
            raise PoolTimeout from exc

    async def _send(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        params: Mapping[str, Any] | None,
        json: Any,
        content: bytes | None,
        read_timeout: float | None,
        whole: bool,
    ) -> tuple[aiohttp.ClientResponse, asyncio.Semaphore]:
        """Take a pool slot and send; the caller owns the answer and the slot from here on.
        Transport failures become our typed errors here. Redirects are never followed (the
        signature covers one path)."""
        pool = await self._pool()
        try:
            await self._slot(pool.slots)
        except PoolTimeout as exc:
            raise self.map_transport_error(exc) from exc
        started = time.perf_counter()
        try:
            response = await pool.session.request(
                method,
                self.base_url + path,
                headers=headers,
                params=params,
                json=json,
                data=content,
                timeout=async_timeout(read_timeout, whole=whole),
                allow_redirects=False,
            )
        except TRANSPORT_ERRORS as exc:
            pool.slots.release()
            raise self.map_transport_error(exc) from exc
        except BaseException:
            pool.slots.release()
            raise
        self._latency.observe(time.perf_counter() - started)
        if response.status >= 500:
            self._server_errors.inc()
        return response, pool.slots

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        read_timeout: float | None = None,
    ) -> UpstreamResponse:
        """One call on the pooled session, its answer read whole."""
        response, slot = await self._send(
            method,
            path,
            headers=headers,
            params=params,
            json=json,
            content=content,
            read_timeout=read_timeout,
            whole=True,
        )
        try:
            body = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise self.map_transport_error(exc) from exc
        finally:
            response.release()
            slot.release()
        return UpstreamResponse(response.status, response.headers, body)

    async def astream(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        json: Any = None,
        read_timeout: float | None = None,
    ) -> UpstreamStream:
        """One call whose body is still arriving (SSE): the caller must `aclose()` it."""
        response, slot = await self._send(
            method,
            path,
            headers=headers,
            params=None,
            json=json,
            content=None,
            read_timeout=read_timeout,
            whole=False,
        )
        return UpstreamStream(response, self, slot)

    def sync_client(self) -> httpx.Client:
        with self._lock:
            if self._sync is None or self._sync.base_url != httpx.URL(self.base_url):
                self._sync = httpx.Client(
                    base_url=self.base_url,
                    limits=httpx.Limits(
                        max_connections=settings.UPSTREAM_POOL_SIZE, keepalive_expiry=30
                    ),
                    timeout=timeout(),
                    follow_redirects=False,
                    trust_env=False,
                )
            return self._sync

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        pool = self._pools.pop(loop, None)
        if pool is not None:
            await pool.closer.aclose()

    def map_transport_error(self, exc: BaseException) -> ApiError:
        """Transport failures, mapped once: refused/reset → 502, timeout → 504, pool full → 503.
        Every transport failure passes here once, so it is counted here."""
        kind = (
            "pool_timeout"
            if isinstance(exc, (PoolTimeout, httpx.PoolTimeout))
            else "timeout"
            if isinstance(exc, (httpx.TimeoutException, TimeoutError))
            else "transport"
        )
        UPSTREAM_ERRORS.labels(self.name.lower(), kind).inc()
        if isinstance(exc, (PoolTimeout, httpx.PoolTimeout)):
            return ServiceUnavailable(
                f"Too many requests in flight to {self.name}; retry shortly.",
                code="upstream_busy",
                retry_after=1,
            )
        if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
            return UpstreamTimeout(f"{self.name} did not answer in time.")
        return UpstreamUnavailable(f"{self.name} could not be reached.")


def upstream_error_message(response: ResponseLike) -> str:
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


def error_from_upstream(name: str, response: ResponseLike) -> ApiError:
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
