"""Run an ASGI peer with uvicorn in a background thread (own event loop), for tests/benchmarks."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

# Long-lived SSE responses must not hold shutdown beyond the 2 s budget of stop().
_GRACEFUL_S = 1


class RunningPeer:
    """A started peer. ``url`` has no trailing slash, e.g. ``http://127.0.0.1:54321``."""

    def __init__(self, app: Any, server: uvicorn.Server, thread: threading.Thread, host: str, port: int):
        self.app = app
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    def stop(self, timeout: float = 2.0) -> None:
        """Graceful shutdown (open connections get ~1 s), then force; returns within ``timeout``."""
        if not self.thread.is_alive():
            return
        self.server.should_exit = True
        self.thread.join(max(0.0, timeout - 0.5))
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(0.5)

    def __enter__(self) -> RunningPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_S,
        # Keep-alive long enough that benchmarks reuse connections.
        timeout_keep_alive=30,
    )


def start_peer(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> RunningPeer:
    """Start ``app`` on ``host:port`` (0 = any free port) and wait until it is listening."""
    server = uvicorn.Server(make_config(app, host, port))
    # uvicorn only installs signal handlers in the main thread, so a worker thread is safe.
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
    sockets = server.servers[0].sockets
    bound_port = int(sockets[0].getsockname()[1]) if sockets else port
    return RunningPeer(app, server, thread, host, bound_port)
