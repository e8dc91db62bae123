"""The portal's API key pages: the list (with each key's spend this month against its budget and
the keys about to expire), the create form, one key's settings page, roll and revoke. Each view
calls one `apikeys` service or selector; an `ApiError` from a service becomes a message on the
page, bad input an error next to its field: never an error page."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.models import User
from apikeys import selectors as key_selectors
from apikeys import services as key_services
from apikeys.models import APIKey
from portal import forms
from portal.views import PortalPage
from timepoint_billing.errors import ApiError

ROLL_GRACE_SECONDS = 24 * 3600  # the old key keeps working a day after a roll


class KeyListPage(PortalPage):
    section = "keys"

    def get(self, request: HttpRequest) -> HttpResponse:
        return self.render_list(request, forms.KeyCreateForm())

    def render_list(self, request: HttpRequest, form: forms.KeyCreateForm) -> HttpResponse:
        keys = list(key_selectors.key_list(user=request.user))  # type: ignore[arg-type]
        return self.page(
            request,
            "keys.html",
            keys=keys,
            expiring=[key for key in keys if key.expires_soon()],
            form=form,
            page_title="API keys",
        )

    def post(self, request: HttpRequest) -> HttpResponse:
        """Create a key and show its secret on this response only: it is never stored, so a
        reload cannot show it again."""
        form = forms.KeyCreateForm(request.POST)
        if not form.is_valid():
            return self.render_list(request, form)
        try:
            key, raw = key_services.key_create(
                user=request.user,  # type: ignore[arg-type]
                name=form.cleaned_data["name"],
                mode=form.cleaned_data["mode"],
                **form.controls(),
            )
        except ApiError as exc:
            messages.error(request, exc.detail_text)
            return self.render_list(request, form)
        return secret_page(request, key=key, raw=raw, rolled=False)


class KeyEditPage(PortalPage):
    """One key: its spend this month against its budget, and its settings (name, scopes,
    budget, expiry, origins, networks) for as long as it works."""

    section = "keys"

    def get(self, request: HttpRequest, key_id: int) -> HttpResponse:
        key = _owned(request, key_id)
        if key is None:
            return _no_such_key(request)
        return self.render_edit(request, key, forms.KeyEditForm(key=key))

    def post(self, request: HttpRequest, key_id: int) -> HttpResponse:
        key = _owned(request, key_id)
        if key is None:
            return _no_such_key(request)
        if not key.is_usable():
            messages.error(request, "This key no longer works: there is nothing to change.")
            return redirect("portal:key", key_id=key.pk)
        form = forms.KeyEditForm(request.POST, key=key)
        if not form.is_valid():
            return self.render_edit(request, key, form)
        try:
            key_services.key_update(
                user=request.user,  # type: ignore[arg-type]
                key_id=key.pk,
                **form.changes(),
            )
        except ApiError as exc:
            form.add_error(None, exc.detail_text)
            return self.render_edit(request, key, form)
        messages.success(request, f"Key {key.prefix}… saved. The change applies within seconds.")
        return redirect("portal:keys")

    def render_edit(
        self, request: HttpRequest, key: APIKey, form: forms.KeyEditForm
    ) -> HttpResponse:
        return self.page(
            request,
            "key_edit.html",
            key=key,
            budget=key_selectors.key_budget(key),
            form=form,
            page_title=f"Key {key.name}",
        )


def _owned(request: HttpRequest, key_id: int) -> APIKey | None:
    user: User = request.user  # type: ignore[assignment]
    return key_selectors.key_get(user=user, key_id=key_id)


def _no_such_key(request: HttpRequest) -> HttpResponse:
    # As for roll and revoke: back to the list, saying so (another user's key is "no such key").
    messages.error(request, "No such API key.")
    return redirect("portal:keys")


class KeyRollPage(PortalPage):
    section = "keys"

    def post(self, request: HttpRequest, key_id: int) -> HttpResponse:
        try:
            key, raw = key_services.key_roll(
                user=request.user,  # type: ignore[arg-type]
                key_id=key_id,
                grace_seconds=ROLL_GRACE_SECONDS,
            )
        except ApiError as exc:
            messages.error(request, exc.detail_text)
            return redirect("portal:keys")
        return secret_page(request, key=key, raw=raw, rolled=True)


class KeyRevokePage(PortalPage):
    def post(self, request: HttpRequest, key_id: int) -> HttpResponse:
        try:
            key = key_services.key_revoke(user=request.user, key_id=key_id)  # type: ignore[arg-type]
        except ApiError as exc:
            messages.error(request, exc.detail_text)
        else:
            messages.success(request, f"Key {key.prefix}… revoked. It stops working at once.")
        return redirect("portal:keys")


def secret_page(request: HttpRequest, *, key: Any, raw: str, rolled: bool) -> HttpResponse:
    response = render(
        request,
        "portal/key_secret.html",
        {"key": key, "raw": raw, "rolled": rolled, "section": "keys", "page_title": "Your new key"},
    )
    # The one response that carries a secret: no browser or proxy may keep a copy.
    response["Cache-Control"] = "no-store"
    return response
