"""Staff manage service credentials in the admin: the secret is shown once, only its digest is
stored, and a revoked credential is refused at once."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client

from accounts.models import User
from apikeys.services import key_digest
from internal.models import ServiceCredential

CHANGELIST = "/admin/internal/servicecredential/"


def _superuser_client() -> Client:
    admin = User.objects.create_superuser(username="root", email="root@example.com")
    client = Client()
    client.force_login(admin, backend="django.contrib.auth.backends.ModelBackend")
    return client


def test_staff_add_a_credential_see_its_secret_once_and_revoke_it(user: Any):
    staff = _superuser_client()
    response = staff.post(
        f"{CHANGELIST}add/",
        {"name": "clockchain", "note": "graph writer", "rate_limit_per_minute": "120"},
    )
    assert response.status_code == 302, response.content[:500]
    shown = staff.get(response["Location"]).content.decode()  # the page after the save
    secret = re.search(r"tp_svc_\w+", shown)
    assert secret is not None
    credential = ServiceCredential.objects.get()
    assert credential.name == "clockchain" and credential.rate_limit_per_minute == 120
    assert credential.key_digest == key_digest(secret.group(0))
    # Shown once: never again, on any page.
    for page in (response["Location"], CHANGELIST, f"{CHANGELIST}{credential.pk}/change/"):
        assert secret.group(0) not in staff.get(page).content.decode()

    service = Client()
    headers: dict[str, Any] = {
        "HTTP_X_SERVICE_KEY": secret.group(0),
        "HTTP_X_USER_ID": str(user.pk),
    }
    answered = service.get("/internal/billing/status", **headers)
    assert answered.status_code == 200 and answered["X-RateLimit-Limit"] == "120"

    revoked = staff.post(CHANGELIST, {"action": "revoke", ACTION_CHECKBOX_NAME: [credential.pk]})
    assert revoked.status_code == 302
    credential.refresh_from_db()
    assert credential.revoked_at is not None
    refused = service.get("/internal/billing/status", **headers)
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_service_key"
