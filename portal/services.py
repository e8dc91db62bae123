"""The staff groups: "support" reads everything in the billing admin, "billing" may also grant.

Permissions are Django's model permissions, so the admin enforces them on every page and action:
support gets only `view_*` (detail pages render read-only), billing adds what changes money —
creating and re-driving credit grants, marking payments reviewed, changing key tiers and limits.
Every change made through the admin is recorded in its log with who did it.
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.db import transaction

SUPPORT = "support"
BILLING = "billing"
# Apps whose rows staff look at; djstripe is Stripe's mirror (customers, subscriptions, invoices).
VIEWED_APPS = ("accounts", "apikeys", "metering", "payments", "webhooks", "alerts", "djstripe")
# On top of support's view permissions (app_label, codename).
BILLING_EXTRA = (
    ("payments", "add_creditgrant"),  # the manual-grant form
    ("payments", "change_creditgrant"),  # retry, mark resolved
    ("payments", "change_payment"),  # refunds and disputes: mark reviewed
    ("payments", "change_autorecharge"),  # turn a user's auto-recharge off
    ("payments", "change_catalogueitem"),  # "Sync from Stripe now" (prices change in Stripe)
    ("apikeys", "change_apikey"),  # revoke, change tier, enterprise limits
    ("accounts", "change_user"),  # plan and tier
    ("djstripe", "change_subscription"),  # cancel (guarded and logged in payments/admin.py)
    ("webhooks", "change_webhookdelivery"),  # resend a developer's webhook delivery
    ("webhooks", "change_webhookendpoint"),  # turn a misbehaving endpoint off
)


def _view_permissions() -> list[Permission]:
    return list(
        Permission.objects.filter(
            content_type__app_label__in=VIEWED_APPS, codename__startswith="view_"
        )
    )


def _billing_permissions() -> list[Permission]:
    extra = [
        Permission.objects.filter(content_type__app_label=app, codename=codename).first()
        for app, codename in BILLING_EXTRA
    ]
    return _view_permissions() + [permission for permission in extra if permission is not None]


@transaction.atomic
def staff_groups_setup(*, reset: bool = True) -> dict[str, int]:
    """Create the two groups; with `reset` set their permissions to exactly the defaults.

    Without `reset` an existing group is left alone, so permissions staff changed on purpose
    survive a deploy's `migrate`. Returns the permission count per group."""
    counts = {}
    for name, permissions in ((SUPPORT, _view_permissions()), (BILLING, _billing_permissions())):
        group, created = Group.objects.get_or_create(name=name)
        if created or reset:
            group.permissions.set(permissions)
        counts[name] = group.permissions.count()
    return counts
