"""Key lifecycle over HTTP: create, list, revoke, roll, owner-only, both header forms."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Tier
from apikeys.lookup import key_cache_forget, key_generate, key_is_well_formed
from apikeys.models import APIKey
from apikeys.services import (
    keys_revoke_all_for_user,
    keys_set_tier_for_user,
)

pytestmark = pytest.mark.django_db


def _as_key(raw: str, form: str = "bearer") -> dict[str, Any]:
    if form == "x-api-key":
        return {"HTTP_X_API_KEY": raw}
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_format_and_checksum_are_checked_offline() -> None:
    raw = key_generate(mode="live")
    assert raw.startswith("tp_live_") and len(raw) == len("tp_live_") + 46
    assert key_is_well_formed(raw)
    typo = raw[:20] + ("A" if raw[20] != "A" else "B") + raw[21:]
    assert not key_is_well_formed(typo)
    assert not key_is_well_formed("tp_live_" + "x" * 46)
    assert key_is_well_formed(key_generate(mode="test"))


def test_create_shows_key_once_and_lists_without_secret(
    client: Client, auth_headers: dict[str, Any], user: Any
) -> None:
    created = client.post(
        "/api/v1/keys", {"name": "ci"}, content_type="application/json", **auth_headers
    )
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("tp_live_") and body["prefix"] == body["key"][:16]
    assert body["tier"] == "free" and body["mode"] == "live" and body["status"] == "active"
    assert body["limits"] == {"per_minute": 10, "per_day": 100, "concurrency": 1}
    stored = APIKey.objects.get(pk=body["id"])
    assert body["key"] not in stored.key_digest and len(stored.key_digest) == 64

    listed = client.get("/api/v1/keys", **auth_headers)
    assert listed.status_code == 200
    [item] = listed.json()
    assert item["id"] == body["id"] and "key" not in item and item["request_count"] == 0


def test_tier_in_body_is_rejected_and_changes_nothing(
    client: Client, auth_headers: dict[str, Any], user: Any
) -> None:
    response = client.post(
        "/api/v1/keys",
        {"name": "sneaky", "tier": "enterprise"},
        content_type="application/json",
        **auth_headers,
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert "tier" in response.json()["errors"]
    assert not APIKey.objects.exists()


@pytest.mark.parametrize("form", ["bearer", "x-api-key"])
def test_both_header_forms_authenticate(
    client: Client, user: Any, make_key: Any, form: str
) -> None:
    _, raw = make_key(user)
    response = client.get("/api/v1/keys", **_as_key(raw, form))
    assert response.status_code == 200
    assert response["X-RateLimit-Limit"] == "10"
    assert response["X-RateLimit-Remaining"] == "9"
    assert response["RateLimit-Policy"] == '"minute";q=10;w=60, "day";q=100;w=86400'
    assert response["RateLimit"].startswith('"minute";r=9;t=')


def test_test_mode_key_authenticates(client: Client, user: Any, make_key: Any) -> None:
    _, raw = make_key(user, mode="test")
    assert raw.startswith("tp_test_")
    assert client.get("/api/v1/keys", **_as_key(raw)).status_code == 200
    from apikeys.lookup import caller_from_api_key

    assert caller_from_api_key(raw).is_test_mode


@pytest.mark.parametrize(
    "raw",
    ["tp_live_garbage", key_generate(mode="live"), key_generate(mode="live")[:-1] + "!"],
)
def test_unknown_or_malformed_key_is_401(client: Client, db: Any, raw: str) -> None:
    response = client.get("/api/v1/keys", **_as_key(raw))
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"


def test_revoke_is_idempotent_and_revoked_key_is_401(
    client: Client, auth_headers: dict[str, Any], user: Any, make_key: Any
) -> None:
    key, raw = make_key(user)
    assert client.get("/api/v1/keys", **_as_key(raw)).status_code == 200  # now cached
    assert client.delete(f"/api/v1/keys/{key.pk}", **auth_headers).status_code == 204
    assert client.delete(f"/api/v1/keys/{key.pk}", **auth_headers).status_code == 204
    response = client.get("/api/v1/keys", **_as_key(raw))
    assert response.status_code == 401 and response.json()["code"] == "invalid_api_key"
    listed = client.get("/api/v1/keys", **auth_headers).json()
    assert listed[0]["status"] == "revoked"


def test_expired_key_is_401(client: Client, user: Any, make_key: Any) -> None:
    _, raw = make_key(user, expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/keys", **_as_key(raw)).status_code == 401


def test_deleted_owner_key_is_401(client: Client, user: Any, make_key: Any) -> None:
    _, raw = make_key(user)
    user.deleted_at = timezone.now()
    user.save()
    assert client.get("/api/v1/keys", **_as_key(raw)).status_code == 401


def test_roll_without_grace_stops_old_key_at_once(
    client: Client, auth_headers: dict[str, Any], user: Any, make_key: Any
) -> None:
    key, old_raw = make_key(user)
    response = client.post(
        f"/api/v1/keys/{key.pk}/roll",
        {"grace_seconds": 0},
        content_type="application/json",
        **auth_headers,
    )
    assert response.status_code == 201
    new_raw = response.json()["key"]
    assert new_raw != old_raw
    assert client.get("/api/v1/keys", **_as_key(old_raw)).status_code == 401
    assert client.get("/api/v1/keys", **_as_key(new_raw)).status_code == 200


def test_roll_with_grace_keeps_old_key_until_grace_ends(
    client: Client, auth_headers: dict[str, Any], user: Any, make_key: Any
) -> None:
    key, old_raw = make_key(user)
    response = client.post(
        f"/api/v1/keys/{key.pk}/roll",
        {"grace_seconds": 3600},
        content_type="application/json",
        **auth_headers,
    )
    assert response.status_code == 201
    assert client.get("/api/v1/keys", **_as_key(old_raw)).status_code == 200
    key.refresh_from_db()
    assert key.expires_at is not None
    assert timedelta(minutes=59) < key.expires_at - timezone.now() <= timedelta(hours=1)
    # The grace period passes (the cached lookup re-checks expiry on every hit).
    APIKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    key_cache_forget()
    assert client.get("/api/v1/keys", **_as_key(old_raw)).status_code == 401


@pytest.mark.parametrize("grace", [-1, 7 * 86400 + 1, "soon"])
def test_roll_grace_out_of_range_is_400(
    client: Client, auth_headers: dict[str, Any], user: Any, make_key: Any, grace: Any
) -> None:
    key, _ = make_key(user)
    response = client.post(
        f"/api/v1/keys/{key.pk}/roll",
        {"grace_seconds": grace},
        content_type="application/json",
        **auth_headers,
    )
    assert response.status_code == 400


def test_other_users_key_is_404_on_every_route(
    client: Client, auth_headers: dict[str, Any], user: Any, other_user: Any, make_key: Any
) -> None:
    theirs, their_raw = make_key(other_user)
    for method, path, body in [
        ("delete", f"/api/v1/keys/{theirs.pk}", None),
        ("post", f"/api/v1/keys/{theirs.pk}/roll", {"grace_seconds": 0}),
        ("get", f"/api/v1/keys/{theirs.pk}/usage", None),
    ]:
        kwargs: dict[str, Any] = {"content_type": "application/json"} if body else {}
        response = getattr(client, method)(path, body, **kwargs, **auth_headers)
        assert response.status_code == 404, path
        assert response.json()["code"] == "key_not_found"
    theirs.refresh_from_db()
    assert theirs.revoked_at is None and theirs.expires_at is None
    assert client.get("/api/v1/keys", **_as_key(their_raw)).status_code == 200
    missing = client.delete("/api/v1/keys/999999", **auth_headers)
    assert missing.status_code == 404


def test_live_key_cap(
    client: Client, auth_headers: dict[str, Any], user: Any, settings: Any
) -> None:
    settings.MAX_LIVE_KEYS_PER_USER = 2
    for n in range(2):
        body = {"name": f"k{n}"}
        response = client.post(
            "/api/v1/keys", body, content_type="application/json", **auth_headers
        )
        assert response.status_code == 201
    third = client.post(
        "/api/v1/keys", {"name": "k3"}, content_type="application/json", **auth_headers
    )
    assert third.status_code == 409 and third.json()["code"] == "key_limit_reached"
    test_key = client.post(
        "/api/v1/keys",
        {"name": "t", "mode": "test"},
        content_type="application/json",
        **auth_headers,
    )
    assert test_key.status_code == 201


def test_rolling_with_grace_counts_toward_the_live_key_cap(
    client: Client, auth_headers: dict[str, Any], user: Any, make_key: Any, settings: Any
) -> None:
    settings.MAX_LIVE_KEYS_PER_USER = 2

    def roll(key_id: int, grace: int) -> Any:
        return client.post(
            f"/api/v1/keys/{key_id}/roll",
            {"grace_seconds": grace},
            content_type="application/json",
            **auth_headers,
        )

    first, first_raw = make_key(user)
    rolled = roll(first.pk, 3600)
    assert rolled.status_code == 201  # the old key in grace and the new one: 2 live keys
    # Rolling the new key again would leave three working keys: refused like a create.
    spam = roll(rolled.json()["id"], 3600)
    assert spam.status_code == 409 and spam.json()["code"] == "key_limit_reached"
    create = client.post(
        "/api/v1/keys", {"name": "more"}, content_type="application/json", **auth_headers
    )
    assert create.status_code == 409 and create.json()["code"] == "key_limit_reached"
    assert APIKey.objects.filter(user=user).count() == 2
    assert client.get("/api/v1/keys", **_as_key(first_raw)).status_code == 200
    # Without grace a roll swaps one working key for another, so it is fine at the cap.
    swapped = roll(rolled.json()["id"], 0)
    assert swapped.status_code == 201
    live = [k for k in APIKey.objects.filter(user=user) if k.is_usable()]
    assert len(live) == 2
    # Once the grace period is over the old key stops counting.
    APIKey.objects.filter(pk=first.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert roll(swapped.json()["id"], 3600).status_code == 201


def test_key_tier_follows_its_owner_in_both_directions(
    client: Client, user: Any, make_key: Any
) -> None:
    from payments.catalogue import PlanTerms
    from payments.services import user_plan_set

    api_pro = PlanTerms("api_pro", "price_plan_api_pro", 1000, hd_access=True, key_tier=Tier.PRO)
    explorer = PlanTerms("explorer", "price_plan_explorer", 50, hd_access=False, key_tier="free")

    _, raw = make_key(user)
    deal, deal_raw = make_key(user, name="deal", rate_limit_per_minute=7)  # a per-key override
    revoked, _ = make_key(user, name="old")
    APIKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now(), is_active=False)

    def staff_set_tier(tier: str) -> int:  # what the users admin does on save
        user.tier = tier
        user.save(update_fields=["tier"])
        return keys_set_tier_for_user(user=user)

    def seen(raw_key: str) -> tuple[str, str]:
        response = client.get("/api/v1/keys", **_as_key(raw_key))
        assert response.status_code == 200
        row = next(k for k in response.json() if raw_key.startswith(k["prefix"]))
        return row["tier"], response["X-RateLimit-Limit"]

    assert seen(raw) == ("free", "10") and seen(deal_raw) == ("free", "7")

    user_plan_set(user=user, terms=api_pro)
    assert seen(raw) == ("pro", "60") and seen(deal_raw) == ("pro", "7")

    assert staff_set_tier(Tier.ENTERPRISE) == 2
    assert seen(raw) == ("enterprise", "300") and seen(deal_raw) == ("enterprise", "7")
    user_plan_set(user=user, terms=explorer)  # staff-set enterprise wins over the plan
    assert seen(raw) == ("enterprise", "300")

    # Off enterprise: the keys come down too (they used to stay enterprise for good).
    assert staff_set_tier(Tier.FREE) == 2
    assert seen(raw) == ("free", "10") and seen(deal_raw) == ("free", "7")

    # A staff-set pro tier wins over a free plan; the API Pro plan alone gives pro as well.
    staff_set_tier(Tier.PRO)
    assert seen(raw) == ("pro", "60")
    user_plan_set(user=user, terms=api_pro)
    staff_set_tier(Tier.FREE)  # lowering the user's tier below the plan does not undo the plan
    assert seen(raw) == ("pro", "60")

    assert APIKey.objects.get(pk=revoked.pk).tier == Tier.FREE  # revoked keys are left alone
    deal.refresh_from_db()
    assert deal.rate_limit_per_minute == 7


def test_revoke_all_for_user(client: Client, user: Any, make_key: Any) -> None:
    _, raw1 = make_key(user)
    _, raw2 = make_key(user, mode="test")
    assert client.get("/api/v1/keys", **_as_key(raw1)).status_code == 200
    assert keys_revoke_all_for_user(user=user) == 2
    assert client.get("/api/v1/keys", **_as_key(raw1)).status_code == 401
    assert client.get("/api/v1/keys", **_as_key(raw2)).status_code == 401


def test_last_used_is_written_at_most_once_a_minute(
    client: Client, user: Any, make_key: Any
) -> None:
    key, raw = make_key(user)
    client.get("/api/v1/keys", **_as_key(raw))
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    key_cache_forget()
    client.get("/api/v1/keys", **_as_key(raw))
    key.refresh_from_db()
    assert key.last_used_at == first
