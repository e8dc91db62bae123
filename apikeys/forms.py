"""Form fields for the controls a key's owner sets (scopes, monthly budget, origins, networks),
shared by the portal's key forms and the staff admin. Each cleans its value with the function the
keys API uses (`apikeys.services.clean_*`), so a value is refused with the same sentence wherever
it is typed, and shown next to the field instead of failing the page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from accounts.scopes import Scope
from apikeys import services
from timepoint_billing.errors import ApiError

MAX_BUDGET = 100_000_000  # as the keys API (`apikeys.serializers`)
# Room for MAX_ALLOWED_ENTRIES entries of 200 characters and their separators; longer text is
# refused before it is split.
MAX_LINES_TEXT = services.MAX_ALLOWED_ENTRIES * 201
SEPARATORS = re.compile(r"[\s,]+")

SCOPES_HELP = (
    "read: Clockchain, credit balance, history and costs, usage. generate: spends credits. "
    "publish: timepoint visibility and deletion. keys: manage keys and sessions (leave it off "
    "unless this key must manage keys). billing: checkout, billing portal, App Store receipts."
)
BUDGET_HELP = (
    "Credits this key may spend per calendar month (UTC). A generation that would pass it is "
    "refused (402 budget_exhausted) before it starts; refunds give credits back. Empty: no "
    "budget, up to your balance."
)
ORIGINS_HELP = (
    "One per line, like https://app.example.com. Browser calls from any other origin are "
    "refused (403 key_not_allowed_here). Empty: any. A speed bump, not a secret: a client "
    "outside a browser can send any Origin."
)
CIDRS_HELP = (
    "One per line, like 203.0.113.0/24 or 2001:db8::/32 (a single address is fine). Calls "
    "from other addresses are refused (403 key_not_allowed_here). Empty: any."
)


def _cleaned(cleaner: Callable[[Iterable[str]], list[str]], value: Iterable[str]) -> list[str]:
    try:
        return cleaner(value)
    except ApiError as exc:
        raise ValidationError(exc.detail_text) from exc


class ScopesField(forms.MultipleChoiceField):
    """The key's scopes as checkboxes; at least one, kept in the canonical order."""

    widget = forms.CheckboxSelectMultiple

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", SCOPES_HELP)
        super().__init__(choices=Scope.choices, **kwargs)

    def clean(self, value: Any) -> list[str]:
        return _cleaned(services.clean_scopes, super().clean(value))


class LinesField(forms.Field):
    """A list typed one entry per line (commas and spaces separate too), cleaned by `cleaner`."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "autocapitalize": "off"})

    def __init__(self, *, cleaner: Callable[[Iterable[str]], list[str]], **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)
        self.cleaner = cleaner

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(str(item) for item in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list | tuple):
            return [str(item) for item in value]
        text = str(value or "")
        if len(text) > MAX_LINES_TEXT:
            raise ValidationError(f"At most {services.MAX_ALLOWED_ENTRIES} entries.")
        return [item for item in SEPARATORS.split(text) if item]

    def clean(self, value: Any) -> list[str]:
        return _cleaned(self.cleaner, super().clean(value))


def budget_field(**kwargs: Any) -> forms.IntegerField:
    """The monthly credit budget: empty means none."""
    kwargs.setdefault("help_text", BUDGET_HELP)
    return forms.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_BUDGET,
        label="Monthly credit budget",
        **kwargs,
    )


def origins_field(**kwargs: Any) -> LinesField:
    kwargs.setdefault("help_text", ORIGINS_HELP)
    return LinesField(cleaner=services.clean_origins, label="Allowed origins", **kwargs)


def cidrs_field(**kwargs: Any) -> LinesField:
    kwargs.setdefault("help_text", CIDRS_HELP)
    return LinesField(cleaner=services.clean_cidrs, label="Allowed networks (CIDR)", **kwargs)
