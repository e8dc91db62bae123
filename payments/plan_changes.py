"""Changing a subscription from the API and the portal: upgrade now (prorated, charged at once),
downgrade at the end of the period, cancel at period end and resume. What each change means for
the subscriber's terms, plan and credits is `payments.plans`'."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone
from djstripe.models import Subscription

from accounts.models import User
from payments import selectors, stripe_client
from payments.catalogue import PlanTerms
from payments.models import CatalogueKind, PlanChange, PlanChangeState, PlanSubscription
from payments.plans import (
    LIVE_SUBSCRIPTION_STATUSES,
    change_record,
    plan_sync_for_user,
    subscription_item,
    subscription_period,
    terms_of,
    terms_set,
)
from timepoint_billing.errors import BadRequest, Conflict

logger = logging.getLogger("timepoint.payments")


def _live_subscription(user: User) -> PlanSubscription:
    rows = PlanSubscription.objects.select_for_update().filter(
        user=user, status__in=LIVE_SUBSCRIPTION_STATUSES
    )
    best = max(rows, key=lambda row: terms_of(row).rank(), default=None)
    if best is None:
        raise Conflict(
            "You have no subscription; subscribe to a plan first.", code="no_subscription"
        )
    return best


def _stripe_price_set(
    row: PlanSubscription, price_id: str, *, behaviour: str, change: PlanChange, why: str
) -> dict[str, Any]:
    """Ask Stripe to bill the subscription's item at `price_id` (`behaviour`: its proration).
    The idempotency key names the change (recorded first), so the SDK's retries of this call
    are one request, and a later change to the same price is a request of its own."""
    data = stripe_client.subscription_update(
        row.stripe_subscription_id,
        idempotency_key=f"plan-{why}:{change.pk}",
        items=[{"id": _subscription_item_id(row), "price": price_id}],
        proration_behavior=behaviour,
        payment_behavior="error_if_incomplete",
    )
    return data


def _subscription_item_id(row: PlanSubscription) -> str:
    """The subscription's item, from the mirror, or from Stripe while the mirror catches up."""
    mirrored = Subscription.objects.filter(id=row.stripe_subscription_id).first()
    data = dict(mirrored.stripe_data or {}) if mirrored else {}
    item_id = str(subscription_item(data).get("id") or "")
    if not item_id:
        fetched = stripe_client.subscription_retrieve(row.stripe_subscription_id)
        item_id = str(subscription_item(fetched).get("id") or "")
    if not item_id:
        raise Conflict(
            "This subscription has nothing to change; ask support.", code="subscription_empty"
        )
    return item_id


def plan_change(*, user: User, plan: str) -> PlanSubscription:
    """Move the caller's subscription to the plan sold under `plan`: an upgrade now (prorated,
    charged at once), a downgrade at the end of the period. Asking for the plan a scheduled
    downgrade is leaving keeps the plan and cancels the downgrade."""
    item = selectors.item_on_sale(kind=CatalogueKind.PLAN, key=plan)
    if item is None:
        raise BadRequest(f"Unknown plan {plan!r}.", code="unknown_plan")
    target = PlanTerms.of_item(item)
    with transaction.atomic():
        row = _live_subscription(user)
        if row.cancel_at_period_end:
            raise Conflict(
                "The subscription ends at the end of the period; resume it first.",
                code="subscription_ending",
            )
        scheduled = row.changes.filter(state=PlanChangeState.SCHEDULED).first()
        if target.price_id == row.stripe_price_id:
            if scheduled is None:
                raise Conflict("You are on this plan already.", code="already_on_plan")
            # Back to what they pay for now: Stripe bills it again from the next period.
            _stripe_price_set(
                row, row.stripe_price_id, behaviour="none", change=scheduled, why="keep"
            )
            PlanChange.objects.filter(pk=scheduled.pk).update(state=PlanChangeState.CANCELLED)
            return row
        if scheduled is not None:
            # Stripe bills the downgraded price already: restore what the period was paid at,
            # so an upgrade is prorated from it.
            _stripe_price_set(
                row, row.stripe_price_id, behaviour="none", change=scheduled, why="keep"
            )
            PlanChange.objects.filter(pk=scheduled.pk).update(state=PlanChangeState.CANCELLED)
        if target.rank() > terms_of(row).rank():
            change = change_record(row, target)
            data = _stripe_price_set(
                row, target.price_id, behaviour="always_invoice", change=change, why="up"
            )
            terms_set(row, target)
            row.status = str(data.get("status") or row.status)
            row.save()
            logger.info({"event": "plan_upgraded", "user": user.pk, "change": change.pk})
        else:
            if row.current_period_end is None:  # known only from an invoice so far: ask Stripe
                fetched = stripe_client.subscription_retrieve(row.stripe_subscription_id)
                row.current_period_end = subscription_period(fetched)[1]
                row.save(update_fields=["current_period_end", "updated_at"])
            period_end = row.current_period_end or timezone.now()
            change = change_record(row, target, scheduled_for=period_end)
            _stripe_price_set(row, target.price_id, behaviour="none", change=change, why="down")
            logger.info({"event": "plan_downgrade_scheduled", "user": user.pk, "change": change.pk})
    plan_sync_for_user(user=user)
    return row


def _cancel_flag_set(*, user: User, ending: bool) -> PlanSubscription:
    with transaction.atomic():
        row = _live_subscription(user)
        if row.cancel_at_period_end == ending:
            raise Conflict(
                "The subscription already ends at period end."
                if ending
                else "The subscription is not set to end.",
                code="already_cancelled" if ending else "not_cancelled",
            )
        data = stripe_client.subscription_update(
            row.stripe_subscription_id,
            idempotency_key=f"cancel-{ending}:{row.stripe_subscription_id}:{row.updated_at.timestamp()}",
            cancel_at_period_end=ending,
        )
        row.cancel_at_period_end = bool(data.get("cancel_at_period_end", ending))
        row.save()
    logger.info(
        {"event": "subscription_ending" if ending else "subscription_resumed", "user": user.pk}
    )
    return row


def subscription_cancel(*, user: User) -> PlanSubscription:
    """Cancel at the end of the period: the plan and its credits stay until then."""
    return _cancel_flag_set(user=user, ending=True)


def subscription_resume(*, user: User) -> PlanSubscription:
    """Undo a cancellation before the period ends."""
    return _cancel_flag_set(user=user, ending=False)
