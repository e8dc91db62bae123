"""Portal pages. Each view reads through one app's selectors or calls one app's service; the
templates do the rest. Errors from a service (`ApiError`) become a message on the page, never a
JSON body: these are pages for people."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View

from accounts.models import User
from accounts.services import balance_lookup, user_provision
from apikeys import selectors as key_selectors
from metering import selectors as usage_selectors
from payments import selectors as billing_selectors
from payments import services as billing_services
from portal import forms
from timepoint_billing.charts import Series, bar_chart
from timepoint_billing.errors import ApiError, error_response
from upstreams import flash

USAGE_PERIODS = (7, 30, 90)
HISTORY_ROWS = 25


class PortalPage(LoginRequiredMixin, View):
    section = ""

    def page(self, request: HttpRequest, template: str, **context: Any) -> HttpResponse:
        context.setdefault("section", self.section)
        return render(request, f"portal/{template}", context)


def login_page(request: HttpRequest) -> HttpResponse:
    next_url = request.GET.get("next", "/portal/")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = "/portal/"
    if request.user.is_authenticated:
        return redirect(next_url)
    return _login_page(
        request, next_url, forms.LocalSignInForm() if settings.LOCAL_SIGNIN else None
    )


def _login_page(
    request: HttpRequest,
    next_url: str,
    local_form: forms.LocalSignInForm | None,
    status: int = 200,
) -> HttpResponse:
    configured = bool(settings.OIDC_RP_CLIENT_ID and settings.OIDC_OP_AUTHORIZATION_ENDPOINT)
    context = {
        "oidc_configured": configured,
        "next": next_url,
        "page_title": "Sign in",
        "local_form": local_form,
    }
    return render(request, "portal/login.html", context, status=status)


def local_signin(request: HttpRequest) -> HttpResponse:
    """Development only (`LOCAL_SIGNIN`, refused in production): sign in as `local|<email>`, a
    real user resolved in Flash like any Auth0 one, then on to the portal. POST, CSRF-checked."""
    if not settings.LOCAL_SIGNIN:
        return error_response(404, "Not found.", "not_found")
    if request.method != "POST":
        return error_response(
            405, f'Method "{request.method}" not allowed.', "method_not_allowed", {"Allow": "POST"}
        )
    next_url = request.POST.get("next", "/portal/")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = "/portal/"
    form = forms.LocalSignInForm(request.POST)
    if not form.is_valid():
        return _login_page(request, next_url, form, status=400)
    email = form.cleaned_data["email"].lower()
    claims = {"email": email, "name": form.cleaned_data["name"]}
    try:
        user = user_provision(sub=f"local|{email}", claims=claims, access_token="")
    except ApiError as exc:
        messages.error(request, str(exc.detail))
        return _login_page(request, next_url, form, status=exc.status_code)
    if user.deleted_at is not None or not user.is_active:
        messages.error(request, "This account is disabled.")
        return _login_page(request, next_url, form, status=403)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return redirect(next_url)


def docs_page(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/docs.html", {"section": "docs", "page_title": "Docs"})


class HomePage(PortalPage):
    section = "home"

    def get(self, request: HttpRequest) -> HttpResponse:
        user: User = request.user  # type: ignore[assignment]
        keys = key_selectors.key_list(user=user)
        today = timezone.localdate()
        week = usage_selectors.usage_summary(
            user_id=user.pk, start=today - timedelta(days=6), end=today, granularity="day"
        )
        return self.page(
            request,
            "home.html",
            balance=balance_lookup(user=_with_flash_id(user)),
            live_keys=[key for key in keys if key.is_usable()],
            requests_7d=week["totals"]["requests"],
            plan_label=billing_selectors.plan_label(user.plan),
        )


class UsagePage(PortalPage):
    """Requests, errors and credits per day (all keys, or one), from metering's daily roll-ups."""

    section = "usage"

    def get(self, request: HttpRequest) -> HttpResponse:
        user: User = request.user  # type: ignore[assignment]
        period = _int_param(request, "days", 30)
        period = period if period in USAGE_PERIODS else 30
        end = timezone.localdate()
        start = end - timedelta(days=period - 1)
        summary = usage_selectors.usage_summary(
            user_id=user.pk, start=start, end=end, granularity="day"
        )
        keys = list(key_selectors.key_list(user=user))
        keys_by_id = {one.pk: one for one in keys}
        key = None
        key_id = _int_param(request, "key", 0)
        if key_id:
            key = key_selectors.key_get(user=user, key_id=key_id)
        if key is not None:
            rows = usage_selectors.usage_for_key(
                key_id=key.pk, start=start, end=end, granularity="day"
            )["rows"]
            periods = _sum_by_period(rows)
            totals = {name: sum(day[name] for day in periods.values()) for name in COUNTS}
        else:
            periods = {row["period"]: row for row in summary["periods"]}
            totals = summary["totals"]
        days = [start + timedelta(days=offset) for offset in range(period)]
        labels = [day.strftime("%b %-d") for day in days]
        table = [{"day": day, **periods[day]} for day in reversed(days) if day in periods]
        return self.page(
            request,
            "usage.html",
            page_title="Usage",
            period=period,
            periods=USAGE_PERIODS,
            key=key,
            keys=keys,
            totals=totals,
            # Each key's row carries the key: its spend this UTC month against its budget.
            by_key=[{**row, "key": keys_by_id.get(row["api_key_id"])} for row in summary["by_key"]],
            table=table,
            requests_chart=bar_chart(
                labels,
                [
                    Series("Requests", _series(periods, days, "requests"), "bar-requests"),
                    Series("Errors", _series(periods, days, "errors"), "bar-errors"),
                ],
            ),
            credits_chart=bar_chart(
                labels, [Series("Credits", _series(periods, days, "credits_spent"), "bar-credits")]
            ),
        )


COUNTS = ("requests", "errors", "credits_spent")


def _int_param(request: HttpRequest, name: str, default: int) -> int:
    try:
        return int(request.GET.get(name, default))
    except (TypeError, ValueError):
        return default


def _sum_by_period(rows: list[dict[str, Any]]) -> dict[date, dict[str, int]]:
    """usage_for_key answers per day *and endpoint*; the chart wants one row per day."""
    result: dict[date, dict[str, int]] = {}
    for row in rows:
        day = result.setdefault(row["period"], dict.fromkeys(COUNTS, 0))
        for name in COUNTS:
            day[name] += int(row[name] or 0)
    return result


def _series(periods: dict[date, Any], days: list[date], name: str) -> list[int]:
    return [int(periods[day][name]) if day in periods else 0 for day in days]


def _with_flash_id(user: User) -> User:
    """The user with their Flash id, resolving it once if the browser login has not (the OIDC
    login creates the row; Flash's resolve is idempotent). Flash down → the user as is."""
    if user.flash_user_id or not user.auth0_sub:
        return user
    try:
        return user_provision(sub=user.auth0_sub, claims={}, access_token="")
    except ApiError:
        return user


class BillingPage(PortalPage):
    """Balance and credit history from Flash; packs and plans from payments' catalogue."""

    section = "billing"

    def get(self, request: HttpRequest) -> HttpResponse:
        user = _with_flash_id(request.user)  # type: ignore[arg-type]
        bought = billing_selectors.plan_subscription_for_user(user=user)
        subscription = billing_selectors.subscription_view(bought) if bought else None
        history: list[flash.LedgerEntry] | None = None
        if user.flash_user_id:
            try:
                history = flash.credit_history(flash_user_id=user.flash_user_id, limit=HISTORY_ROWS)
            except ApiError:
                history = None  # the page still loads; the template says Flash is not answering
        return self.page(
            request,
            "billing.html",
            page_title="Credits & billing",
            balance=balance_lookup(user=user),
            history=history,
            packs=billing_selectors.pack_list(),
            plans=_plan_offers(subscription),
            subscription=subscription,
            plan_label=billing_selectors.plan_label(user.plan),
            subscriptions=billing_selectors.subscription_list_for_user(user=user),
            payments=_payments_with_labels(user),
            auto_recharge=billing_selectors.auto_recharge_status(user=user, recent=5),
        )


def _payments_with_labels(user: Any) -> list[tuple[Any, str]]:
    """The latest payments, each with the name of what was bought (`api_pro` reads "API Pro")."""
    payments = list(billing_selectors.payment_list_for_user(user=user, limit=10))
    labels = billing_selectors.item_labels({payment.product for payment in payments})
    return [(payment, labels.get(payment.product, payment.product)) for payment in payments]


def _plan_offers(subscription: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The plans on sale, each marked for a subscriber as their current plan, an upgrade (now,
    prorated) or a downgrade (at period end), by the rule the plan-change service applies."""
    offers = [plan for plan in billing_selectors.plan_list() if plan["monthly_credits"]]
    if subscription is None:
        return offers
    mine = (subscription["monthly_credits"], subscription["price_cents"] or 0)
    for plan in offers:
        theirs = (plan["monthly_credits"], plan["price_cents"] or 0)
        same = plan["name"] == subscription["plan"] and theirs == mine
        plan["change"] = "current" if same else "upgrade" if theirs > mine else "downgrade"
    return offers


class SubscriptionPage(PortalPage):
    """POST a plan change, a cancellation at period end or a resume → payments' services →
    back to the billing page with what happened."""

    def post(self, request: HttpRequest) -> HttpResponse:
        form = forms.SubscriptionForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Choose a plan.")
            return redirect("portal:billing")
        user: User = request.user  # type: ignore[assignment]
        action = form.cleaned_data["action"]
        try:
            if action == "cancel":
                billing_services.subscription_cancel(user=user)
                messages.success(request, "Your plan ends at the end of the period.")
            elif action == "resume":
                billing_services.subscription_resume(user=user)
                messages.success(request, "Your plan continues.")
            else:
                row = billing_services.plan_change(user=user, plan=form.cleaned_data["plan"])
                view = billing_selectors.subscription_view(row)
                if view["scheduled_change"]:
                    change = view["scheduled_change"]
                    when = change["effective_at"].strftime("%b %-d, %Y")
                    messages.success(request, f"You move to {change['display_name']} on {when}.")
                else:
                    messages.success(request, f"You are on {view['display_name']} now.")
        except ApiError as exc:
            messages.error(request, exc.detail_text)
        return redirect("portal:billing")


class CheckoutPage(PortalPage):
    """POST a pack or plan name → payments' checkout service → 303 to Stripe Checkout."""

    def post(self, request: HttpRequest) -> HttpResponse:
        form = forms.CheckoutForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Choose something to buy.")
            return redirect("portal:billing")
        kind, _, name = form.cleaned_data["product"].partition(":")
        try:
            if kind == "portal":
                url = billing_services.billing_portal_create(user=request.user)  # type: ignore[arg-type]
            else:
                session = billing_services.checkout_create(
                    user=request.user,  # type: ignore[arg-type]
                    package=name if kind == "pack" else "",
                    plan=name if kind == "plan" else "",
                )
                url = session["checkout_url"]
        except ApiError as exc:
            messages.error(request, exc.detail_text)
            return redirect("portal:billing")
        return checkout_redirect(url)


def checkout_redirect(url: str) -> HttpResponseRedirect:
    """Stripe Checkout (or its billing portal) lives on Stripe's origin; 303 so the browser GETs."""
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response
