"""Input for the portal's forms; the services still validate everything that matters."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from accounts.scopes import DEFAULT_KEY_SCOPES
from apikeys import forms as key_forms
from apikeys.models import APIKey, KeyMode
from payments.models import AutoRecharge
from webhooks.models import EventType


class KeyControlsForm(forms.Form):
    """What the owner controls on a key: scopes, monthly budget, expiry, origins, networks. The
    fields clean with the keys API's own checks (`apikeys.forms`)."""

    scopes = key_forms.ScopesField(initial=list(DEFAULT_KEY_SCOPES))
    monthly_credit_budget = key_forms.budget_field(
        widget=forms.NumberInput(attrs={"placeholder": "no budget", "inputmode": "numeric"})
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="The key works through this day (UTC) and stops at its end. Empty: never. "
        "The portal and the keys API remind you 7 days before.",
    )
    allowed_origins = key_forms.origins_field()
    allowed_cidrs = key_forms.cidrs_field()

    def clean_expires_on(self) -> date | None:
        day: date | None = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        if day < timezone.now().astimezone(UTC).date():
            raise forms.ValidationError("Choose today or a later day.")
        if day >= date.max:  # its end would be past the last representable moment
            raise forms.ValidationError("Choose an earlier day.")
        return day

    def expires_at(self) -> datetime | None:
        """The moment the key stops: the end of the chosen UTC day."""
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)

    def controls(self) -> dict[str, Any]:
        """The cleaned controls as `apikeys.services.key_create` takes them."""
        data = self.cleaned_data
        return {
            "scopes": data["scopes"],
            "monthly_credit_budget": data["monthly_credit_budget"],
            "expires_at": self.expires_at(),
            "allowed_origins": data["allowed_origins"],
            "allowed_cidrs": data["allowed_cidrs"],
        }


# Passed to `key_update` as they are when changed (the expiry goes as a moment).
EDITABLE = ("name", "scopes", "monthly_credit_budget", "allowed_origins", "allowed_cidrs")


def expiry_day(expires_at: datetime | None) -> date | None:
    """The UTC day a key works through (the form's `expires_on`) for its expiry moment."""
    if expires_at is None:
        return None
    return (expires_at.astimezone(UTC) - timedelta(microseconds=1)).date()


class KeyCreateForm(KeyControlsForm):
    field_order = ["name", "mode"]

    name = forms.CharField(
        max_length=100,
        strip=True,
        widget=forms.TextInput(attrs={"placeholder": "e.g. production server"}),
    )
    mode = forms.ChoiceField(
        choices=KeyMode.choices,
        initial=KeyMode.LIVE,
        help_text="Test keys are limited and metered like live keys but never spend credits.",
    )


class KeyEditForm(KeyControlsForm):
    """A key's settings; only what changed is sent to `apikeys.services.key_update` (an expiry
    set to the minute through the API stays as it is unless the day is changed here)."""

    field_order = ["name"]

    name = forms.CharField(max_length=100, strip=True)

    def __init__(self, *args: Any, key: APIKey, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "name": key.name,
                "scopes": list(key.scopes or ()),
                "monthly_credit_budget": key.monthly_credit_budget,
                "expires_on": expiry_day(key.expires_at),
                "allowed_origins": list(key.allowed_origins or ()),
                "allowed_cidrs": list(key.allowed_cidrs or ()),
            },
        )
        super().__init__(*args, **kwargs)
        if key.replaced_by_id is not None:
            # A rolled key stops when its grace period ends; that is not the owner's to move.
            self.fields["expires_on"].disabled = True
            self.fields["expires_on"].help_text = "Rolled: it stops when its grace period ends."

    def changes(self) -> dict[str, Any]:
        """The changed fields as `apikeys.services.key_update` takes them."""
        changes = {
            field: self.cleaned_data[field] for field in EDITABLE if field in self.changed_data
        }
        if "expires_on" in self.changed_data:
            changes["expires_at"] = self.expires_at()
        return changes


class CheckoutForm(forms.Form):
    """What to buy, by catalogue name: the price always comes from the plan table and Stripe."""

    product = forms.CharField(max_length=64)


class SubscriptionForm(forms.Form):
    """A change to the caller's subscription; the services decide what it means."""

    action = forms.ChoiceField(
        choices=[("change", "change"), ("cancel", "cancel"), ("resume", "resume")]
    )
    plan = forms.CharField(max_length=64, required=False)

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("action") == "change" and not cleaned.get("plan"):
            raise forms.ValidationError("Choose a plan.")
        return cleaned


class LocalSignInForm(forms.Form):
    """The development sign-in: who to be. No password: the route only exists outside production."""

    email = forms.EmailField(max_length=254)
    name = forms.CharField(max_length=150, strip=True, label="Display name")


class WebhookEndpointForm(forms.Form):
    """Register a webhook endpoint; the webhooks service checks the URL (scheme, address)."""

    url = forms.CharField(
        max_length=2048,
        strip=True,
        label="Endpoint URL",
        widget=forms.TextInput(attrs={"placeholder": "https://example.com/timepoint/webhooks"}),
    )
    events = forms.MultipleChoiceField(
        choices=EventType.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=list(EventType.values),
        label="Events",
    )
    description = forms.CharField(max_length=200, required=False, strip=True)


class AutoRechargeForm(forms.Form):
    """The billing page's auto-recharge rule (payments' service checks it again: the pack on
    sale, the card saved)."""

    enabled = forms.BooleanField(required=False)
    threshold = forms.IntegerField(min_value=1, max_value=AutoRecharge.MAX_THRESHOLD)
    pack = forms.CharField(max_length=64)
    daily_cap = forms.IntegerField(min_value=1, max_value=AutoRecharge.MAX_DAILY_CAP, initial=2)
