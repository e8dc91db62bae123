"""The staff view of users, through the Django admin as a superuser uses it."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client

from accounts.models import Tier, User
from apikeys.models import APIKey

pytestmark = pytest.mark.django_db


class _FormFields(HTMLParser):
    """The values a browser would submit for the page's change form (inputs, selects, textareas)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, Any] = {}
        self._select: str | None = None
        self._multiple = False
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        name = a.get("name", "")
        if tag == "input" and name and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") in ("checkbox", "radio"):
                if "checked" in a:
                    self.data[name] = a.get("value", "on")
            else:
                self.data[name] = a.get("value", "")
        elif tag == "select" and name:
            self._select = name
            self._multiple = "multiple" in a
            self.data[name] = [] if self._multiple else ""
        elif tag == "option" and self._select and "selected" in a:
            if self._multiple:
                self.data[self._select].append(a.get("value", ""))
            else:
                self.data[self._select] = a.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.data[self._textarea] += data


def _change_user(client: Client, user: User, **changes: str) -> Any:
    url = f"/admin/accounts/user/{user.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    fields = _FormFields()
    fields.feed(page.content.decode())
    return client.post(url, {**fields.data, **changes})


@pytest.fixture
def staff_client(db: Any) -> Client:
    admin = User.objects.create_superuser(username="root", email="root@example.com")
    client = Client()
    client.force_login(admin, backend="django.contrib.auth.backends.ModelBackend")
    return client


def test_changing_plan_or_tier_in_the_admin_moves_the_users_keys(
    staff_client: Client, user: User, make_key: Any, catalogue: Any
) -> None:
    _, live_raw = make_key(user)
    make_key(user, name="sandbox", mode="test")

    def per_minute_limit() -> str:
        response = Client().get("/api/v1/keys", HTTP_X_API_KEY=live_raw)
        assert response.status_code == 200
        return str(response["X-RateLimit-Limit"])

    assert per_minute_limit() == "10"  # free; the key's lookup is now cached in this process

    refused = _change_user(staff_client, user, plan="emperor")  # not in the catalogue
    assert refused.status_code == 200
    assert "not a plan in the catalogue" in str(refused.context["adminform"].form.errors)

    response = _change_user(staff_client, user, plan="api_pro")
    assert response.status_code == 302, response.context["adminform"].form.errors
    user.refresh_from_db()
    # The plan's terms come with it, from the catalogue (Stripe's metadata).
    assert user.plan == "api_pro" and user.plan_hd_access and user.plan_key_tier == Tier.PRO
    assert set(APIKey.objects.filter(user=user).values_list("tier", flat=True)) == {Tier.PRO}
    assert per_minute_limit() == "60"  # the limiter applies the pro tier at once

    assert _change_user(staff_client, user, tier=Tier.ENTERPRISE).status_code == 302
    tiers = set(APIKey.objects.filter(user=user).values_list("tier", flat=True))
    assert tiers == {Tier.ENTERPRISE}
    assert per_minute_limit() == "300"


def test_saving_a_user_without_plan_or_tier_changes_leaves_keys_alone(
    staff_client: Client, user: User, make_key: Any
) -> None:
    # A key staff set by hand stays as it is when an unrelated field of its owner is edited.
    key, _ = make_key(user, tier=Tier.PRO)
    assert _change_user(staff_client, user, first_name="Ada L.").status_code == 302
    key.refresh_from_db()
    assert key.tier == Tier.PRO
