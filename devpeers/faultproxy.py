"""A TCP proxy on loopback that misbehaves on purpose, placed between the gateway and a peer.

Modes (set `proxy.mode` at any time; new connections pick it up):
- ``pass``: forward both ways.
- ``refuse``: accept and reset at once (the client sees a connection reset / refused).
- ``hang``: accept, read, never answer.
- ``delay``: wait ``delay_seconds`` before forwarding the request.
- ``cut``: forward the request, then only the first ``cut_after_bytes`` of the answer, then close;
  with ``cut_after_marker`` set, the answer up to and including the first occurrence of those
  bytes instead (so pooled keep-alive connections can be cut at a known point).
- ``drop_after_request``: forward the request, let the upstream answer (it has acted), and close
  the client's connection without passing the answer on.
- ``hold_answer``: forward the request, let the upstream answer (it has acted), and keep the
  client waiting without the answer until it gives up (the moment to SIGKILL a caller).

``arm_on`` (bytes): connections pass everything until a request containing these bytes has
been forwarded, and only the answer to that request gets ``cut`` or ``drop_after_request``.
This hits one call on a pooled keep-alive connection (the generation, not the balance check
made just before it on the same connection).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from contextlib import suppress


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.mode = "pass"
        self.delay_seconds = 0.0
        self.cut_after_bytes = 0
        self.cut_after_marker: bytes | None = None
        self.arm_on: bytes | None = None
        self.answers_dropped = 0
        self.connections = 0
        self.answers_held = 0
        self._open: set[asyncio.StreamWriter] = set()
        self.upstream_closed_at: list[float] = []  # time.monotonic() when an upstream leg closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
            self._server = server
            self.port = int(server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            server.close()
            with suppress(Exception):
                loop.run_until_complete(server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            # Cancel open connections first so no coroutine is left half-run at loop close.
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with suppress(Exception):
                future.result(2)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(2)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_open_connections(self) -> None:
        """Reset every connection already open (a server restart, as its pooled clients see it)."""

        def drop() -> None:
            for writer in list(self._open):
                sock = writer.get_extra_info("socket")
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()

        if self._loop is not None:
            done = threading.Event()

            def run() -> None:
                drop()
                done.set()

            self._loop.call_soon_threadsafe(run)
            done.wait(2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self._open.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "refuse":
            # SO_LINGER 0 turns close() into a TCP reset: what a dead port looks like mid-pool.
            sock = writer.get_extra_info("socket")
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            return
        if mode == "hang":
            with suppress(Exception):
                while await reader.read(65536):
                    pass
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        if mode == "delay":
            await asyncio.sleep(self.delay_seconds)
        armed = asyncio.Event()
        arm_on = self.arm_on if mode in ("cut", "drop_after_request") else None
        if arm_on:
            to_upstream = asyncio.create_task(self._pipe_arming(reader, up_writer, arm_on, armed))
        else:
            to_upstream = asyncio.create_task(self._pipe(reader, up_writer))
        try:
            if arm_on:
                await self._answer_armed(up_reader, writer, mode, armed)
            elif mode == "cut" and self.cut_after_marker:
                await self._pipe_until(up_reader, writer, self.cut_after_marker)
            elif mode == "cut":
                await self._pipe_limited(up_reader, writer, self.cut_after_bytes)
            elif mode == "hold_answer":
                with suppress(Exception):
                    await asyncio.wait_for(up_reader.read(65536), timeout=30)
                    self.answers_held += 1
                    await asyncio.wait_for(to_upstream, timeout=120)  # until the client leaves
            elif mode == "drop_after_request":
                # Read the upstream's whole first answer (it has acted), pass nothing back.
                with suppress(Exception):
                    await asyncio.wait_for(up_reader.read(65536), timeout=30)
            else:
                # Either side closing ends both legs: a client that goes away closes the
                # upstream connection at once, and `upstream_closed_at` says when.
                to_client = asyncio.create_task(self._pipe(up_reader, writer))
                await asyncio.wait({to_client, to_upstream}, return_when=asyncio.FIRST_COMPLETED)
                to_client.cancel()
        finally:
            to_upstream.cancel()
            up_writer.close()
            self.upstream_closed_at.append(time.monotonic())
            writer.close()

    @staticmethod
    async def _pipe_arming(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        marker: bytes,
        armed: asyncio.Event,
    ) -> None:
        seen = b""
        with suppress(Exception):
            while data := await reader.read(65536):
                if not armed.is_set():
                    seen = (seen + data)[-(len(marker) + 65536) :]
                    if marker in seen:
                        armed.set()
                writer.write(data)
                await writer.drain()

    async def _answer_armed(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        mode: str,
        armed: asyncio.Event,
    ) -> None:
        """Pass answers until the armed request's answer starts, then cut or drop it."""
        with suppress(Exception):
            while data := await reader.read(65536):
                if armed.is_set():
                    if mode == "drop_after_request":
                        self.answers_dropped += 1  # the upstream answered (it has acted)
                        return
                    marker = self.cut_after_marker or b""
                    at = data.find(marker) if marker else 0
                    if at >= 0:
                        writer.write(data[: at + len(marker)] if marker else data[:0])
                        await writer.drain()
                        return
                writer.write(data)
                await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    @staticmethod
    async def _pipe_until(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, marker: bytes
    ) -> None:
        seen = b""
        with suppress(Exception):
            while data := await reader.read(65536):
                seen += data
                at = seen.find(marker)
                if at >= 0:
                    writer.write(data[: len(data) - (len(seen) - at - len(marker))])
                    await writer.drain()
                    return
                writer.write(data)
                await writer.drain()

    @staticmethod
    async def _pipe_limited(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
    ) -> None:
        sent = 0
        with suppress(Exception):
            while sent < limit and (data := await reader.read(min(65536, limit - sent))):
                writer.write(data)
                await writer.drain()
                sent += len(data)
