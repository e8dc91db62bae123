"""The staff view: support reads endpoints (never a secret), events and deliveries with every
attempt; billing may also resend a delivery and turn an endpoint off. Logged with who did it."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.test import Client

from accounts.models import User
from devpeers.webhook_receiver import WebhookReceiver
from webhooks.models import DeliveryState, WebhookDelivery
from webhooks.outbox import deliveries_send_due
from webhooks.services import event_emit

pytestmark = pytest.mark.django_db

DELIVERIES = "/admin/webhooks/webhookdelivery/"


def _staff(group: str) -> tuple[User, Client]:
    user = User.objects.create_user(username=f"{group}-person", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return user, client


def test_support_reads_billing_resends(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver
) -> None:
    hook, secret = endpoint
    receiver.default = 500
    event = event_emit(user_id=user.pk, type="key.revoked", data={"k": 1}, dedupe_key="adm")
    deliveries_send_due()
    delivery = WebhookDelivery.objects.get()

    _, support = _staff("support")
    for path in (
        DELIVERIES,
        f"{DELIVERIES}{delivery.pk}/change/",
        f"/admin/webhooks/webhookevent/{event.pk}/change/",
        f"/admin/webhooks/webhookendpoint/{hook.pk}/change/",
        "/admin/webhooks/webhookendpoint/",
    ):
        page = support.get(path)
        assert page.status_code == 200, path
        assert (
            secret.encode() not in page.content
            and hook.secret_encrypted.encode() not in page.content
        )
    assert b"500" in support.get(f"{DELIVERIES}{delivery.pk}/change/").content  # the attempt
    refused = support.post(DELIVERIES, {"action": "resend", ACTION_CHECKBOX_NAME: [delivery.pk]})
    assert refused.status_code in (200, 302, 403)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.RETRYING  # support cannot resend

    staff, billing = _staff("billing")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state=DeliveryState.FAILED)
    done = billing.post(DELIVERIES, {"action": "resend", ACTION_CHECKBOX_NAME: [delivery.pk]})
    assert done.status_code == 302
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.PENDING
    assert LogEntry.objects.filter(user=staff, object_id=str(delivery.pk)).exists()
