"""Staff groups: support reads everything, billing may also grant (Django model permissions)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from accounts.models import User


def _staff(group: str) -> User:
    user = User.objects.create_user(username=f"{group}-person", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return User.objects.get(pk=user.pk)  # fresh: no permission cache


@pytest.mark.django_db
def test_migrate_creates_both_groups() -> None:
    assert set(Group.objects.values_list("name", flat=True)) >= {"support", "billing"}


@pytest.mark.django_db
def test_support_is_read_only() -> None:
    support = _staff("support")
    assert support.has_perm("payments.view_creditgrant")
    assert support.has_perm("apikeys.view_apikey")
    assert support.has_perm("metering.view_usagedaily")
    assert not support.has_perm("payments.add_creditgrant")
    assert not support.has_perm("payments.change_creditgrant")
    assert not support.has_perm("apikeys.change_apikey")
    assert all(
        codename.startswith("view_")
        for codename in Group.objects.get(name="support").permissions.values_list(
            "codename", flat=True
        )
    )


@pytest.mark.django_db
def test_billing_may_grant_and_retry() -> None:
    billing = _staff("billing")
    assert billing.has_perm("payments.add_creditgrant")
    assert billing.has_perm("payments.change_creditgrant")
    assert billing.has_perm("payments.view_payment")
    assert not billing.has_perm("payments.delete_creditgrant")


@pytest.mark.django_db
def test_the_command_resets_changed_groups(capsys: Any) -> None:
    support = Group.objects.get(name="support")
    support.permissions.clear()
    call_command("setup_staff_groups")
    assert support.permissions.filter(codename="view_creditgrant").exists()
    assert "support:" in capsys.readouterr().out
