"""One relayed request's bookkeeping: its JSON body, parsed strictly, and its usage record,
written exactly once."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from metering.services import record_usage
from timepoint_billing.callers import Caller
from timepoint_billing.errors import (
    BadRequest,
)

logger = logging.getLogger("timepoint.relay")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def bad_json(body: bytes) -> dict[str, Any]:
    """Parse a JSON object body or raise 400 (strict: no NaN/Infinity, bounded nesting)."""
    try:
        data = json.loads(body or b"{}", parse_constant=_no_constant)
    except ValueError:
        raise BadRequest("The body is not valid JSON.", code="invalid_json")
    except RecursionError:  # `[[[[…` 100 000 deep: a 500 before this
        raise BadRequest("The body is nested too deeply.", code="invalid_json")
    try:
        # `"\ud800"` parses to a lone surrogate, which no UTF-8 request to Flash can carry.
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise BadRequest("The body contains invalid unicode.", code="invalid_json")
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.", code="invalid_request")
    return data


# --- One relayed call: its usage record, written exactly once


@dataclass
class RelayCall:
    """The bookkeeping of one relayed request: who, which route, and what it cost."""

    request_id: str
    caller: Caller
    endpoint: str
    method: str
    upstream: str
    started: float
    lease: Any = None
    status: int = 0
    credits_spent: int = 0
    preset: str = ""
    partial: bool = False
    recorded: bool = False
    body_started: bool = False  # a stream's body is being sent (see `stream_guard`)

    def record(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        api_key = self.caller.api_key
        record_usage(
            request_id=self.request_id,
            user_id=self.caller.user.pk,
            api_key_id=api_key.pk if api_key is not None else None,
            endpoint=self.endpoint,
            method=self.method,
            status=self.status,
            credits_spent=self.credits_spent,
            response_time_ms=(time.perf_counter() - self.started) * 1000,
            preset=self.preset,
            upstream=self.upstream,
            partial=self.partial,
        )

    async def finish(self) -> None:
        """Write the usage record, then release the rate-limit lease (both idempotent; neither
        waits for I/O: the release is queued and reaches Redis with a later call, see
        `apikeys.lease_releases`)."""
        self.record()
        if self.lease is not None:
            await self.lease.release()
