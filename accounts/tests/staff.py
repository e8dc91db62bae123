"""A staff member of one of the staff groups ("support", "billing"), signed in to the admin: for
the admin tests of every app."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.test import Client

from accounts.models import User


def staff_signed_in(group: str) -> tuple[Client, User]:
    staff = User.objects.create_user(username=f"{group}-staff", is_staff=True)
    staff.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(staff, backend="django.contrib.auth.backends.ModelBackend")
    return client, staff
