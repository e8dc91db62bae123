"""Portal pages for webhooks: the endpoint list with a form to register one, each endpoint with
its recent deliveries and their attempts, and the buttons (rotate the secret, turn off and on,
delete, resend a delivery). Every page reads through webhooks' selectors or calls one of its
services; a service's error is a message on the page."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.models import User
from portal import forms
from portal.views import PortalPage
from timepoint_billing.errors import ApiError
from webhooks import outbox, selectors, services
from webhooks.models import WebhookEndpoint

ROTATION_OVERLAP_SECONDS = 24 * 3600  # the old secret signs too for a day after a rotation
RECENT_DELIVERIES = 50


def _secret_page(
    request: HttpRequest, *, endpoint: WebhookEndpoint, secret: str, rotated: bool
) -> HttpResponse:
    response = render(
        request,
        "portal/webhook_secret.html",
        {
            "endpoint": endpoint,
            "secret": secret,
            "rotated": rotated,
            "section": "webhooks",
            "page_title": "Your signing secret",
        },
    )
    response["Cache-Control"] = "no-store"  # the one page that shows the secret
    return response


class WebhookListPage(PortalPage):
    section = "webhooks"

    def get(self, request: HttpRequest) -> HttpResponse:
        return self.render_list(request, forms.WebhookEndpointForm())

    def render_list(self, request: HttpRequest, form: forms.WebhookEndpointForm) -> HttpResponse:
        endpoints = selectors.endpoint_list(user=request.user)  # type: ignore[arg-type]
        return self.page(
            request, "webhooks.html", endpoints=endpoints, form=form, page_title="Webhooks"
        )

    def post(self, request: HttpRequest) -> HttpResponse:
        form = forms.WebhookEndpointForm(request.POST)
        if not form.is_valid():
            return self.render_list(request, form)
        try:
            endpoint, secret = services.endpoint_create(
                user=request.user,  # type: ignore[arg-type]
                url=form.cleaned_data["url"],
                events=form.cleaned_data["events"],
                description=form.cleaned_data["description"],
            )
        except ApiError as exc:
            field = "url" if exc.code == "webhook_url_not_allowed" else None
            form.add_error(field, exc.detail_text)
            return self.render_list(request, form)
        return _secret_page(request, endpoint=endpoint, secret=secret, rotated=False)


class WebhookDetailPage(PortalPage):
    section = "webhooks"

    def get(self, request: HttpRequest, endpoint_id: str) -> HttpResponse:
        user: User = request.user  # type: ignore[assignment]
        endpoint = selectors.endpoint_get(user=user, endpoint_id=endpoint_id)
        if endpoint is None:
            raise Http404("No such webhook endpoint.")
        deliveries = selectors.delivery_list(
            user=user, endpoint_id=endpoint_id, limit=RECENT_DELIVERIES
        )
        return self.page(
            request,
            "webhook_detail.html",
            endpoint=endpoint,
            deliveries=deliveries,
            page_title="Webhook endpoint",
        )


class WebhookRotatePage(PortalPage):
    def post(self, request: HttpRequest, endpoint_id: str) -> HttpResponse:
        try:
            endpoint, secret = services.endpoint_secret_rotate(
                user=request.user,  # type: ignore[arg-type]
                endpoint_id=endpoint_id,
                overlap_seconds=ROTATION_OVERLAP_SECONDS,
            )
        except ApiError as exc:
            messages.error(request, exc.detail_text)
            return redirect("portal:webhooks")
        return _secret_page(request, endpoint=endpoint, secret=secret, rotated=True)


class WebhookTogglePage(PortalPage):
    def post(self, request: HttpRequest, endpoint_id: str) -> HttpResponse:
        enable = request.POST.get("enabled") == "true"
        try:
            services.endpoint_update(
                user=request.user,  # type: ignore[arg-type]
                endpoint_id=endpoint_id,
                is_enabled=enable,
            )
        except ApiError as exc:
            messages.error(request, exc.detail_text)
            return redirect("portal:webhooks")
        messages.success(request, "Endpoint turned on." if enable else "Endpoint turned off.")
        return redirect("portal:webhook", endpoint_id=endpoint_id)


class WebhookDeletePage(PortalPage):
    def post(self, request: HttpRequest, endpoint_id: str) -> HttpResponse:
        try:
            services.endpoint_delete(user=request.user, endpoint_id=endpoint_id)  # type: ignore[arg-type]
        except ApiError as exc:
            messages.error(request, exc.detail_text)
        else:
            messages.success(request, "Endpoint deleted. Nothing more is sent to it.")
        return redirect("portal:webhooks")


class WebhookResendPage(PortalPage):
    def post(self, request: HttpRequest, delivery_id: str) -> HttpResponse:
        try:
            delivery = outbox.delivery_resend(user=request.user, delivery_id=delivery_id)  # type: ignore[arg-type]
        except ApiError as exc:
            messages.error(request, exc.detail_text)
            return redirect("portal:webhooks")
        messages.success(request, f"Delivery {delivery.public_id} queued: it is sent again now.")
        return redirect("portal:webhook", endpoint_id=delivery.endpoint.public_id)
