"""Small display filters for the portal and the admin dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template

register = template.Library()


@register.filter
def money(cents: Any, currency: str = "usd") -> str:
    """1499 → "$14.99" (other currencies keep their code: "14.99 EUR")."""
    try:
        amount = int(cents) / 100
    except (TypeError, ValueError):
        return ""
    if (currency or "usd").lower() == "usd":
        return f"${amount:,.2f}"
    return f"{amount:,.2f} {currency.upper()}"


@register.filter
def isodate(value: Any) -> datetime | Any:
    """Flash's ISO-8601 strings (with or without an offset) as datetimes for `|date`."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value
