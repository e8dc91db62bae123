"""The billing admin's state-changing actions: the read-only support group cannot run them, the
billing group can, and each run is in the admin log with who did it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.test import Client

from accounts.tests.staff import staff_signed_in
from devpeers.stripe_api import StripePeer
from payments.admin import StripeActionsGuard
from payments.models import CreditGrant, StripeWebhookEvent
from payments.tests import factories as f

EVENTS = "/admin/payments/stripewebhookevent/"
SUBSCRIPTIONS = "/admin/djstripe/subscription/"


def _offered_actions(client: Client, changelist: str) -> set[str]:
    response = client.get(changelist)
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is offered at all
    return {name for name, _ in form.fields["action"].choices} if form is not None else set()


def _event_kept_for_attention(user: Any, customer_id: str) -> StripeWebhookEvent:
    """A paid pack checkout that arrived before its customer was linked to the user."""
    from djstripe.models import Customer

    Customer.objects.filter(id=customer_id).update(subscriber=None)
    session = f.pack_session(customer_id, user.pk)
    del session["metadata"]["user_id"]
    assert (
        f.post_webhook(Client(), f.event("checkout.session.completed", session)).status_code == 200
    )
    event = StripeWebhookEvent.objects.get()
    assert event.state == "needs_attention"
    Customer.objects.filter(id=customer_id).update(subscriber=user)  # now linked
    return event


def _retry(client: Client, event: StripeWebhookEvent) -> Any:
    return client.post(EVENTS, {"action": "retry", ACTION_CHECKBOX_NAME: [event.pk]})


def test_support_cannot_retry_a_webhook_event(user: Any, customer_id: str):
    event = _event_kept_for_attention(user, customer_id)
    support, _ = staff_signed_in("support")

    assert "retry" not in _offered_actions(support, EVENTS)
    _retry(support, event)

    event.refresh_from_db()
    assert event.state == "needs_attention"
    assert CreditGrant.objects.count() == 0
    assert not LogEntry.objects.exists()


def test_billing_retries_a_webhook_event_once_and_it_is_logged(
    user: Any, customer_id: str, flash_peer: Any
):
    event = _event_kept_for_attention(user, customer_id)
    billing, staff = staff_signed_in("billing")

    assert "retry" in _offered_actions(billing, EVENTS)
    assert _retry(billing, event).status_code == 302
    assert _retry(billing, event).status_code == 302  # a second click
    call_command("run_grants", "--once")

    event.refresh_from_db()
    assert event.state == "processed"
    assert CreditGrant.objects.count() == 1
    assert [r for r in flash_peer.ledger_for(user.flash_user_id) if r["amount"] > 0]
    assert flash_peer.user_balance(user.flash_user_id) == 150
    entries = LogEntry.objects.filter(user=staff, object_id=str(event.pk))
    assert entries.count() == 2 and "Retried" in entries[0].get_change_message()


def _mirrored_subscription(customer_id: str, stripe_api: StripePeer) -> Any:
    from djstripe.models import Subscription

    sub = f.subscription(customer_id, "historian")
    stripe_api.put(sub)  # what dj-stripe's re-fetch finds when it mirrors the event
    assert (
        f.post_webhook(Client(), f.event("customer.subscription.created", sub)).status_code == 200
    )
    call_command("run_grants", "--once")
    return Subscription.objects.get(id=sub["id"])


def _confirm_cancel(client: Client, subscription: Any, mounted_under: str = SUBSCRIPTIONS) -> Any:
    """What dj-stripe's confirm page posts (any dj-stripe admin mounts the same view)."""
    return client.post(
        f"{mounted_under}action/_cancel/subscription/",
        {ACTION_CHECKBOX_NAME: [subscription.pk]},
    )


def test_support_cannot_cancel_subscriptions(user: Any, customer_id: str, stripe_api: StripePeer):
    subscription = _mirrored_subscription(customer_id, stripe_api)
    support, _ = staff_signed_in("support")

    assert "_cancel" not in _offered_actions(support, SUBSCRIPTIONS)
    assert "_resync_instances" not in _offered_actions(support, SUBSCRIPTIONS)
    listing = support.post(
        SUBSCRIPTIONS, {"action": "_cancel", ACTION_CHECKBOX_NAME: [subscription.pk]}
    )
    assert b"action/_cancel/subscription/" not in listing.content  # no confirm page
    assert _confirm_cancel(support, subscription).status_code == 403
    assert _confirm_cancel(support, subscription, "/admin/djstripe/customer/").status_code == 403
    resync = support.post(
        f"{SUBSCRIPTIONS}action/_resync_instances/subscription/",
        {ACTION_CHECKBOX_NAME: [subscription.pk]},
    )
    assert resync.status_code == 403

    assert stripe_api.cancelled == []
    assert not LogEntry.objects.exists()


def test_cancelling_needs_the_change_permission_on_subscriptions_and_is_logged(
    user: Any, customer_id: str, stripe_api: StripePeer
):
    subscription = _mirrored_subscription(customer_id, stripe_api)
    billing, staff = staff_signed_in("billing")
    group = Group.objects.get(name="billing")
    change = Permission.objects.get(
        content_type__app_label="djstripe", codename="change_subscription"
    )

    assert group.permissions.filter(pk=change.pk).exists()  # billing may cancel by default
    group.permissions.remove(change)
    assert "_cancel" not in _offered_actions(billing, SUBSCRIPTIONS)
    assert _confirm_cancel(billing, subscription).status_code == 403
    assert stripe_api.cancelled == []

    group.permissions.add(change)
    assert "_cancel" in _offered_actions(billing, SUBSCRIPTIONS)
    confirm = billing.post(
        SUBSCRIPTIONS, {"action": "_cancel", ACTION_CHECKBOX_NAME: [subscription.pk]}
    )
    assert confirm.status_code == 200 and b"action/_cancel/subscription/" in confirm.content
    assert _confirm_cancel(billing, subscription).status_code == 302

    assert stripe_api.cancelled == [subscription.id]
    entry = LogEntry.objects.get(user=staff, object_id=str(subscription.pk))
    assert "Cancelled at Stripe" in entry.get_change_message()


def test_every_djstripe_admin_with_actions_is_guarded():
    from djstripe.admin.actions import CustomActionMixin

    with_actions = [a for a in admin.site._registry.values() if isinstance(a, CustomActionMixin)]
    assert with_actions and all(isinstance(a, StripeActionsGuard) for a in with_actions)
