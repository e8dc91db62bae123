"""JSON on the relay's hot path: orjson, with the standard library's answer wherever orjson would
refuse what `json` accepts (issue 17).

orjson parses and writes an upstream answer several times faster than `json`, but it is stricter:
it refuses integers past 64 bits, NaN and Infinity, and strings holding a lone surrogate. Those
still go through `json`, so what a client receives does not depend on which library read it. The
one visible difference: orjson writes non-ASCII characters as UTF-8 where `json` wrote `\\uXXXX`
escapes (both are the same JSON text to any parser; the body is declared `application/json`,
which is UTF-8).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Like `json.loads`; ValueError when `data` is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # what orjson refuses but `json` reads (or the same ValueError)


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (no spaces after separators), as `json.dumps(..., separators=(",",
    ":"))` wrote."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()
