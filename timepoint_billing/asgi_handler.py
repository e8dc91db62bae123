"""Django's ASGI handler without a thread per request on the relay's async routes (issue 9).

Django wraps every request in asgiref's `ThreadSensitiveContext`, which gives the request its own
single-thread executor: the first thread-sensitive hop of the request (the `request_started`
signal, the response's `close()`) *starts a new thread*, and it is joined when the request ends.
That was the largest cost left on the relay path after the middleware. The relay's views are
async and do their database work through `run_db` (its own pool), so for their routes the context
is not needed: their few thread-sensitive hops go to asgiref's one shared thread, as they did
before Django 3.1. Every other route (DRF's sync views, admin, portal) keeps Django's behaviour.

It also enforces MAX_REQUEST_BODY_BYTES while the body arrives: Django buffers the whole body
before any middleware runs, so a 10 MB upload was read (into memory, then a temporary file) only
to be refused. See `BodyLimit`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import get_resolver, set_script_prefix

from timepoint_billing.routes import async_route_prefixes

if TYPE_CHECKING:
    from timepoint_billing.relay_lane import RelayLane

logger = logging.getLogger("timepoint.request")

# Set in the scope when the body was cut short; RequestContextMiddleware answers it with 413.
BODY_TOO_LARGE = "timepoint.body_too_large"
# Put in the scope by the production server's protocol (server.py): a `DisconnectWatch`.
DISCONNECT_WATCH = "timepoint.disconnect_watch"


class DisconnectWatch:
    """How the production server tells a request that its client left, without a task awaiting
    `receive` for it (Django's disconnect listener: two tasks per request, which the relay's reads
    gave up for speed). The handler registers the task serving the request; the protocol's
    `connection_lost` cancels it, so the view's `finally` frees the rate-limit slot and the
    upstream call is cancelled at once instead of running to its timeout."""

    __slots__ = ("fired", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.fired = False

    def client_left(self) -> None:
        task = self.task
        if task is not None and not task.done() and not self.fired:
            self.fired = True
            task.cancel()


def _declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # RequestContextMiddleware answers 400
    return None


class BodyLimit:
    """`receive` for Django's handler that stops a body at MAX_REQUEST_BODY_BYTES.

    A declared Content-Length over the limit is refused before any of the body is read; a chunked
    body once its received bytes pass the limit. Either way Django sees the body end there (what
    it read so far is never parsed) and `BODY_TOO_LARGE` in the scope makes the middleware answer
    the usual 413 JSON, with the request id and the log line every response gets. The
    rest of the body is left unread, so Django's disconnect listener just waits to be cancelled
    once the response is sent (reading on would be reading the body after all)."""

    def __init__(self, scope: dict[str, Any], receive: Any, limit: int) -> None:
        self.scope = scope
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.ended = False  # the body was ended here, not by the client
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            scope[BODY_TOO_LARGE] = True

    async def __call__(self) -> dict[str, Any]:
        if self.ended:
            await asyncio.Event().wait()  # cancelled by Django when the response is sent
        if not self.scope.get(BODY_TOO_LARGE):
            message: dict[str, Any] = await self.receive()
            if message["type"] != "http.request":
                return message
            self.received += len(message.get("body", b""))
            if self.received <= self.limit:
                return message
            self.scope[BODY_TOO_LARGE] = True
        self.ended = True
        return {"type": "http.request", "body": b"", "more_body": False}


def _release(response: Any) -> None:
    """`HttpResponseBase.close()` (Django 5.2) without its `request_finished` signal: run the
    response's resource closers (a stream's cleanup hooks among them), then mark it closed."""
    for closer in response._resource_closers:
        try:
            closer()
        except Exception:  # as Django: a failing closer must not stop the others
            logger.exception("a response closer failed")
    response._resource_closers.clear()
    response.closed = True


YOUNG_GC_THRESHOLD = 10_000


def _freeze_startup_heap(handler: GatewayASGIHandler) -> None:
    """Keep what the worker built at startup (Django's apps, models, URL conf, settings, the
    imported modules: ~190 000 objects, most of its heap, none of it garbage) out of the cyclic
    garbage collector's passes. Each full collection traversed all of it: 240-270 ms on this
    machine class (timed with the gateway's own imports), a pause for every request in flight,
    whenever the objects requests leave behind a while (buffered usage records, cached callers)
    added up to a quarter of that heap. `gc.freeze` moves the objects alive now to a generation
    the collector never scans (a full collection then takes under 1 ms); nothing is disabled for
    what comes later (issue 17).

    Then the young generation's threshold goes from 700 to YOUNG_GC_THRESHOLD allocations: a
    relayed request allocates a few hundred container objects, nearly all freed by reference
    counting, so at 700 the collector ran every two or three requests only to find no cycle
    (~300 collections per 5 000 requests, ~60 µs of CPU per request measured with `gc.callbacks`
    in-process; 5 collections at 10 000). What cycles there are wait a little longer: kilobytes."""
    # The URL conf, built now to be frozen (the relay's views; the other areas load on first use).
    _ = get_resolver().url_patterns
    _ = handler.lane
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


class GatewayASGIHandler(ASGIHandler):
    @functools.cached_property
    def lane(self) -> RelayLane | None:
        """Decided once, as Django reads MIDDLEWARE once for its chain."""
        # Not at the top: the lane imports app modules (models), and the gunicorn worker class
        # imports this module before Django is set up.
        from timepoint_billing.relay_lane import RelayLane

        return RelayLane() if RelayLane.applies() else None

    async def run_get_response(self, request: Any) -> Any:
        """The relay's lane for its routes (timepoint_billing/relay_lane.py), Django otherwise."""
        lane = self.lane
        route = lane.route(request.path_info) if lane is not None else None
        if lane is None or route is None:
            return await super().run_get_response(request)
        response = await lane.serve(request, route)
        response._resource_closers.append(request.close)
        return response

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limited = BodyLimit(scope, receive, settings.MAX_REQUEST_BODY_BYTES)
        await super().handle(scope, limited, send)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["path"].startswith(async_route_prefixes()):
            limited = BodyLimit(scope, receive, settings.MAX_REQUEST_BODY_BYTES)
            await self.handle_on_loop(scope, limited, send)
            return
        await super().__call__(scope, receive, send)

    async def handle_on_loop(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django 5.2's `ASGIHandler.handle` without the `request_started`/`request_finished`
        signals, for the relay's async routes.

        Django sends them through `sync_to_async` (a thread hop each) because their receivers
        are sync, and every receiver connected to them (`reset_queries`,
        `close_old_connections`, `close_caches`, `reset_urlconf`) has nothing to do for these
        routes: the event loop's thread never holds a database connection (the relay's database
        work goes through `run_db`, which keeps its own threads' connections healthy), the
        caches' `close()` is a no-op for django-redis and the local-memory cache, and no relay
        view sets a urlconf or runs with DEBUG's query log. Sent even inline they were ~4 % of a
        worker's CPU on the relay (issue 9). A new receiver of these signals must be checked
        against this (`test_request_signal_receivers_are_known` lists the known ones).
        Otherwise kept in step with Django's own `handle` (the disconnect listener, the
        cancellation handling), copied here because it has no hook for this."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None  # create_request returns one or the other
            body_file.close()
            await self.send_response(error_response, send)
            _release(error_response)
            return

        async def process_request(request: Any, send: Any) -> Any:
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected during send_response
            return response

        watch = scope.get(DISCONNECT_WATCH)
        if watch is not None and scope["method"] in ("GET", "HEAD"):
            # The relay's reads (their body is empty): the server cancels this task when the
            # client leaves, instead of a listener task per request.
            await self.process_watched(request, send, watch)
            body_file.close()
            return
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            pass
        else:
            _release(response)
        body_file.close()

    async def process_watched(self, request: Any, send: Any, watch: DisconnectWatch) -> None:
        task = asyncio.current_task()
        assert task is not None
        watch.task = task
        response = None
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not watch.fired:
                raise  # the worker is stopping: not ours to swallow
            task.uncancel()  # the client left; the view's `finally` blocks have run
        finally:
            watch.task = None
        if response is not None:
            _release(response)

    async def lifespan(self, receive: Any, send: Any) -> None:
        """The ASGI lifespan protocol, which Django does not speak. At shutdown: write the usage
        records still buffered and close the upstream pools, before the worker exits.

        Needed because a worker stopped by SIGTERM never runs `atexit`: uvicorn (and so
        gunicorn's UvicornWorker) drains its connections, then re-raises the signal with the
        default handler, and the process dies of it. The lifespan shutdown runs after the last
        request and before that."""
        # Not at the top: the gunicorn worker class (timepoint_billing/server.py) imports this
        # module before Django is set up, when no app's models can be imported yet.
        from apikeys import lease_releases
        from metering.services import usage_flush_at_shutdown
        from upstreams.clockchain import CLOCKCHAIN
        from upstreams.flash import FLASH

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _freeze_startup_heap(self)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await asyncio.to_thread(usage_flush_at_shutdown)
                    # Leases released in the last milliseconds (queued, apikeys.lease_releases):
                    # freed now rather than by their TTL.
                    await lease_releases.flush()
                    await FLASH.aclose()
                    await CLOCKCHAIN.aclose()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return
