"""Flash loses concurrent credit updates (upstreams.md pitfall 11): a generation writes back the
balance it read when it started, so a grant applied while a generation of the same Flash user is
in flight is overwritten. Generations (the relay) and grants (the payments outbox) therefore take
this per-user, two-sided lock in the shared cache before they change a user's credits in Flash.
"""

from __future__ import annotations

import math
import time
import uuid

from django.conf import settings
from django.core.cache import cache


def flash_user_busy_key(flash_user_id: str) -> str:
    """Cache key the relay sets while a credit-changing generation for this Flash user runs.

    Contract: the relay sets it (any truthy value, with a timeout ≥ its generation timeout) before
    calling Flash and deletes it when the call ends. The grant worker waits while it is set."""
    return f"flash:busy:{flash_user_id}"


def flash_user_granting_key(flash_user_id: str) -> str:
    """Cache key the grant worker holds while it changes this Flash user's credits.

    Together with the busy counter this is a two-sided lock, sound because the cache orders
    every operation (Redis; one process's memory without it): the worker *sets* its marker, then
    reads the busy counter; the relay *raises* the busy counter, then reads the marker. Whichever
    went second sees the other and backs off, so a grant never runs while a generation is in
    flight, nor a generation starts while a grant is under way. A cache that does not answer
    counts as busy: the grant waits (it is in the outbox), it is never sent blind."""
    return f"flash:granting:{flash_user_id}"


def grant_marker_seconds() -> int:
    """As long as one grant call can take (a worker killed mid-call frees the user after it),
    and never longer than a sending claim is trusted: once the claim counts as abandoned, the
    next worker may take the grant over, and must be able to take the user's credits too."""
    call = math.ceil(settings.UPSTREAM_CONNECT_TIMEOUT + settings.UPSTREAM_READ_TIMEOUT) + 2
    return max(1, min(call, int(settings.GRANT_SENDING_LEASE_SECONDS)))


def user_credits_take_for_grant(flash_user_id: str) -> str | None:
    """Hold the user's credits for a grant, waiting (bounded) for in-flight generations to end.
    Returns the holder's token, or None when the user stayed busy (try again later)."""
    deadline = time.monotonic() + settings.GRANT_BUSY_WAIT_SECONDS
    key = flash_user_granting_key(flash_user_id)
    token = uuid.uuid4().hex
    while True:
        if cache.add(key, token, grant_marker_seconds()):
            if not cache.get(flash_user_busy_key(flash_user_id)):
                return token
            user_credits_give_back(flash_user_id, token)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def user_credits_give_back(flash_user_id: str, token: str) -> None:
    key = flash_user_granting_key(flash_user_id)
    if cache.get(key) == token:  # never another worker's marker (ours may have expired)
        cache.delete(key)
