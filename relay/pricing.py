"""What a generation costs: Flash's preset names and its own cost table (upstreams.md A4)."""

from __future__ import annotations

import logging

from django.conf import settings

from timepoint_billing import async_cache
from timepoint_billing.errors import (
    UpstreamError,
)
from upstreams import flash

logger = logging.getLogger("timepoint.relay")

# Flash's preset names (upstreams.md A4). Any other value is refused before pricing.
PRESETS = frozenset({"balanced", "hd", "hyper", "gemini3", "free_distillable", "frontier"})
# Presets that need a plan or tier with HD access: `hd` (10 credits) and `frontier` (Claude Opus,
# which Flash under-prices at 5; pitfall 8).
HD_PRESETS = frozenset({"hd", "frontier"})
COSTS_CACHE_KEY = "relay:flash-costs"


def costs_cache_seconds() -> float:
    return float(settings.FLASH_COSTS_CACHE_SECONDS)


# --- Flash's cost table


async def flash_costs() -> dict[str, int]:
    """Flash's `/credits/costs` table, cached for about a minute (it changes with deploys); the
    cache is awaited on the event loop, never a blocking call."""
    cached = await async_cache.get(COSTS_CACHE_KEY)
    if isinstance(cached, dict):
        return cached
    response = await flash.acall("GET", "/api/v1/credits/costs")
    if response.status_code != 200:
        raise flash.error_from_flash(response)
    try:
        costs = {str(k): int(v) for k, v in response.json()["costs"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpstreamError("Flash returned an invalid cost table.") from exc
    await async_cache.set(COSTS_CACHE_KEY, costs, costs_cache_seconds())
    return costs


def preset_cost(costs: dict[str, int], preset: str) -> int:
    """What Flash will charge: `costs["generate_" + preset]`, else its default of 5 (A4)."""
    return int(costs.get(f"generate_{preset}", costs.get("generate_balanced", 5)))
