"""Run an ASGI peer with uvicorn in a background thread (own event loop), for tests/benchmarks."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn


class RunningPeer:
    """A started peer. ``url`` has no trailing slash, e.g. ``http://127.0.0.1:54321``."""

    def __init__(
        self,
        app: Any,
        server: uvicorn.Server,
        thread: threading.Thread,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
    ) -> None:
        self.app = app
        self.server = server
        self.thread = thread
        self.loop = loop
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    def stop(self, timeout: float = 2.0) -> None:
        """Graceful shutdown, returning within ``timeout`` seconds.

        Idle connections close at once; a response still streaming after 0.5 s has its
        connection closed (the app sees ``http.disconnect``), so nothing needs cancelling.
        """
        if not self.thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        self.server.should_exit = True
        self.thread.join(0.5)
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._drop_connections)
            self.thread.join(max(0.0, deadline - time.monotonic() - 0.3))
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(max(0.0, deadline - time.monotonic()))

    def _drop_connections(self) -> None:
        # Runs on the server's loop: close every client connection still open.
        for connection in list(self.server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()

    def __enter__(self) -> RunningPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SwitchApp:
    """An ASGI app that forwards to whichever app `target` holds. Tests start one server per
    session and install a fresh peer per test: state never leaks, the slow start happens once."""

    def __init__(self) -> None:
        self.target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


def start_switch() -> tuple[SwitchApp, RunningPeer]:
    """A started server whose app is a `SwitchApp` (install the app per test)."""
    switch = SwitchApp()
    return switch, start_peer(switch)


def make_config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        # Backstop only: stop() closes lingering connections before this expires.
        timeout_graceful_shutdown=1,
        # Clockchain keys its rate limit on the socket peer IP and ignores X-Forwarded-For,
        # so uvicorn must not rewrite the client address from proxy headers.
        proxy_headers=False,
        # Long enough that benchmarks reuse connections.
        timeout_keep_alive=30,
    )


def start_peer(
    app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0
) -> RunningPeer:
    """Start ``app`` on ``host:port`` (0 = any free port) and wait until it is listening."""
    server = uvicorn.Server(make_config(app, host, port))
    # uvicorn installs signal handlers only in the main thread, so a worker thread is safe.
    thread = threading.Thread(target=server.run, name=f"devpeer-{type(app).__name__}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"peer failed to start on {host}:{port}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"peer did not start on {host}:{port} within {timeout}s")
        time.sleep(0.005)
    listener = server.servers[0]
    bound_port = int(listener.sockets[0].getsockname()[1]) if listener.sockets else port
    return RunningPeer(app, server, thread, listener.get_loop(), host, bound_port)
