"""Redis calls of one turn of the event loop, sent as one pipeline (issue 17): the limiter's
scripts (`apikeys.limiter_redis`) and the shared cache's reads (`timepoint_billing.async_cache`).

Under load a worker's event loop wakes up with many requests ready at once, and each of them ran
its limiter script (and, with the Clockchain cache on, its cache read) as a command of its own: a
socket write, a reply to wait for and a read, and a wake-up of Redis, per request, on the same two
cores as everything else. Here the calls that requests make while the loop runs one turn are
queued and sent together when it ends: one write, one read, one wake-up of Redis for all of them.
Redis still runs each script atomically on its own (the pipeline is not a transaction, and needs
none: each script is the whole check of one request), so the limits count exactly as before; a
lone request (an idle gateway) waits for no one and is sent as one command, as before.

A request keeps what it had with its own command: a future that its caller may shield, watch
and cancel (`limiter_redis._Watch`); an answer that arrives for a cancelled one is dropped, as
the reply to a cancelled command was. A pipeline that fails fails each of its requests with the
same error, which each request then judges as before (`limiter_redis.redis_failed`, a cache miss).
A script Redis does not know yet (NOSCRIPT: a Redis restarted or flushed since the script was
loaded) is sent again through redis-py's script object, which loads it; that command did not run.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from redis.exceptions import NoScriptError

# A script call: (keys, args, future); a command: (None, [name, *args], future).
Request = tuple[list[str] | None, list[Any], "asyncio.Future[Any]"]


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return  # cancelled meanwhile (its client left, or `_Watch` gave up on it)
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class ScriptBatches:
    """One event loop's queued calls, by client and script (None: plain commands)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[tuple[int, int], tuple[Any, Any, list[Request]]] = {}
        self.sending: set[asyncio.Task[None]] = set()

    def call(self, client: Any, script: Any, keys: list[str] | None, args: list[Any]) -> Any:
        """A future of the reply, sent at the end of this turn of the loop."""
        future: asyncio.Future[Any] = self.loop.create_future()
        queue = (id(client), id(script))
        if queue not in self.pending:
            self.pending[queue] = (client, script, [])
            self.loop.call_soon(self._send, queue)
        self.pending[queue][2].append((keys, args, future))
        return future

    def _send(self, queue: tuple[int, int]) -> None:
        client, script, batch = self.pending.pop(queue)
        task = self.loop.create_task(_run(client, script, batch))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)


async def _one(client: Any, script: Any, keys: list[str] | None, args: list[Any]) -> Any:
    if keys is None:
        return await client.execute_command(*args)
    return await script(keys=keys, args=args)


async def _run(client: Any, script: Any, batch: list[Request]) -> None:
    try:
        if len(batch) == 1:
            keys, args, future = batch[0]
            try:
                result: Any = await _one(client, script, keys, args)
            except Exception as exc:
                result = exc
            _settle(future, result)
            return
        pipe = client.pipeline(transaction=False)
        for keys, args, _ in batch:
            if keys is None:
                pipe.execute_command(*args)
            else:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            results = [exc] * len(batch)
        unknown = []
        for (keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                unknown.append((keys, args, future))
            else:
                _settle(future, result)
        for request in unknown:
            await _run(client, script, [request])  # loads the script, then runs it
    except asyncio.CancelledError:
        for _, _, future in batch:
            future.cancel()  # the loop is stopping: nobody waits for these any more
        raise


_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ScriptBatches] = (
    weakref.WeakKeyDictionary()
)


def _batches_here() -> ScriptBatches:
    loop = asyncio.get_running_loop()
    batches = _batches.get(loop)
    if batches is None:
        batches = _batches[loop] = ScriptBatches(loop)
    return batches


def batched(client: Any, script: Any, keys: list[str], args: list[Any]) -> Any:
    """`script(keys=keys, args=args)` on `client` (an asyncio Redis client and a script
    registered on it), sent with the other calls of this turn of the loop; a future."""
    return _batches_here().call(client, script, keys, args)


def batched_command(client: Any, *command: Any) -> Any:
    """`client.execute_command(*command)` (a read such as GET: a command whose reply the caller
    may drop when it stops waiting), sent with the other calls of this turn; a future."""
    return _batches_here().call(client, None, None, list(command))
