"""Input for the portal's forms; the services still validate everything that matters."""

from __future__ import annotations

from django import forms

from apikeys.models import KeyMode
from webhooks.models import EventType


class KeyCreateForm(forms.Form):
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


class CheckoutForm(forms.Form):
    """What to buy, by catalogue name: the price always comes from the plan table and Stripe."""

    product = forms.CharField(max_length=64)


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
