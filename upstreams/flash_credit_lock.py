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

from timepoint_billing.errors import ServiceUnavailable


def flash_user_busy_key(flash_user_id: str) -> str:
    """Cache key counting this Flash user's credit-changing generations in flight: raised by
    `generation_busy_mark` before Flash is called, lowered by `generation_busy_unmark` once Flash
    has written the charge back, TTL'd past any generation. Grants wait while it is set."""
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


# --- The generation side (the relay)


class GrantInFlight(Exception):
    """A grant holds the user's credits; the generation's busy mark was taken back."""


def counter_add(key: str, amount: int, ttl: int) -> int:
    """Atomically add to a TTL'd cache counter and return the new value (raises if the cache is
    down: nothing may be charged or sent without the count)."""
    cache.add(key, 0, ttl)
    try:
        value = cache.incr(key, amount)
    except ValueError:  # expired between add and incr
        cache.add(key, 0, ttl)
        value = cache.incr(key, amount)
    if not isinstance(value, int):
        raise ServiceUnavailable(
            "Credit reservations are unavailable; nothing was charged.", code="reservation_failed"
        )
    cache.touch(key, ttl)  # a later addition keeps the counter alive as long as itself
    return value


def counter_sub(key: str, amount: int, ttl: int) -> None:
    try:
        value = cache.decr(key, amount)
    except ValueError:  # expired: nothing left to give back
        return
    if isinstance(value, int) and value < 0:
        cache.set(key, 0, ttl)


def generation_busy_mark(flash_user_id: str, *, ttl: int) -> None:
    """Mark a generation of this user in flight; GrantInFlight (mark taken back) while a grant
    holds the user's credits. Busy first, then look for a grant: see `flash_user_granting_key`."""
    counter_add(flash_user_busy_key(flash_user_id), 1, ttl)
    if cache.get(flash_user_granting_key(flash_user_id)):
        generation_busy_unmark(flash_user_id, ttl=ttl)
        raise GrantInFlight


def generation_busy_unmark(flash_user_id: str, *, ttl: int) -> None:
    counter_sub(flash_user_busy_key(flash_user_id), 1, ttl)
