"""The headers of every webhook delivery, on each documented callback (a drf-spectacular
postprocessing hook: callbacks take no `parameters` through `extend_schema`)."""

from __future__ import annotations

import copy
from typing import Any

from webhooks import signing

CALLBACK_PATH = "{$request.body#/url}"
DELIVERY_HEADERS: list[dict[str, Any]] = [
    {
        "name": signing.SIGNATURE_HEADER,
        "description": "`t=<unix seconds>,v1=<hex>`: HMAC-SHA256 with the endpoint's secret over "
        "`<t>.<raw body>`. During a secret rotation's overlap a second `v1` (the old secret) "
        "follows. Accept the delivery when any `v1` matches and `t` is within 5 minutes of "
        "your clock.",
        "schema": {"type": "string"},
    },
    {
        "name": "Timepoint-Event-Id",
        "description": "`evt_…`, as in the body's `id`.",
        "schema": {"type": "string"},
    },
    {
        "name": "Timepoint-Event-Type",
        "description": "As in the body's `type`.",
        "schema": {"type": "string"},
    },
    {
        "name": "Timepoint-Delivery-Id",
        "description": "`whd_…`: one per event and endpoint, the same on every retry and resend: "
        "drop a delivery id you have already processed.",
        "schema": {"type": "string"},
    },
    {
        "name": "Timepoint-Delivery-Attempt",
        "description": "1 for the first attempt, then 2, 3, …",
        "schema": {"type": "integer"},
    },
]


def add_delivery_headers(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for callback in operation.get("callbacks", {}).values():
                for method in callback.get(CALLBACK_PATH, {}).values():
                    method["parameters"] = [
                        {"in": "header", "required": True, **copy.deepcopy(header)}
                        for header in DELIVERY_HEADERS
                    ]
    return result
