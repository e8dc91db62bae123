"""A person's own timepoints through the running gateway, against the Flash contract peer (which
keeps Flash's gaps: 403 for private, soft-deleted rows still served, the owner check skipped
without a user, streamed timepoints ownerless and public)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from devpeers.faultproxy import FaultProxy

pytestmark = pytest.mark.django_db(transaction=True)

MINE = "/api/v1/timepoints/mine"
STREAM = "/api/v1/generate/stream"
MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def bob(flash_peer: Any) -> Any:
    """A second signed-up user, with a session: `bob.headers` authenticate as him."""
    from accounts.models import User
    from accounts.services import session_create

    sub = "auth0|bob"
    user = User.objects.create_user(
        username=sub, email="bob@example.com", auth0_sub=sub, flash_user_id=flash_peer.add_user(sub)
    )
    _, raw = session_create(user=user)
    user.headers = {"Authorization": f"Bearer {raw}"}  # type: ignore[attr-defined]
    return user


@pytest.fixture
def flash_proxy(flash_peer: Any, settings: Any) -> Iterator[FaultProxy]:
    host, port = flash_peer.url.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port)).start()
    settings.FLASH_URL = proxy.url
    yield proxy
    proxy.stop()


def _stream(gateway: Any, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    """Run a streamed generation to its end; the `done` event's data."""
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11", **body}, headers=headers) as r:
        assert r.status_code == 200, r.read()
        raw = b"".join(r.iter_raw())
    events = [
        json.loads(block[len("data: ") :])
        for block in raw.decode().split("\n\n")
        if block.startswith("data: ")
    ]
    assert events[-1]["event"] == "done"
    return dict(events[-1]["data"])


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# --- 1. GET /timepoints/mine


def test_mine_lists_the_callers_timepoints_paginated_and_filtered(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, bob: Any, usage: Any
) -> None:
    first = flash_peer.add_timepoint(user.flash_user_id, "private", query="The fall of Rome")
    failed = flash_peer.add_timepoint(user.flash_user_id, status="failed", query="Nonsense query")
    flash_peer.add_timepoint(user.flash_user_id, is_deleted=True, query="Gone already")
    flash_peer.add_timepoint(bob.flash_user_id, query="Bob's own")
    flash_peer.add_timepoint(None, query="Nobody's")
    generated = gateway.post("/api/v1/generate", json={"query": "Apollo 11"}, headers=auth)
    assert generated.status_code == 200

    listed = gateway.get(MINE, headers=auth)
    assert _ids(listed) == [generated.json()["id"], failed, first]
    body = listed.json()
    assert (body["total"], body["page"], body["page_size"]) == (3, 1, 20)
    assert set(body["items"][0]) == {
        "id",
        "query",
        "slug",
        "status",
        "year",
        "location",
        "has_image",
        "created_at",
    }
    sent = flash_peer.requests_to("/api/v1/users/me/timepoints")[-1]
    assert sent.headers["x-user-id"] == user.flash_user_id

    assert _ids(gateway.get(f"{MINE}?page=2&page_size=2", headers=auth)) == [first]
    assert _ids(gateway.get(f"{MINE}?status=failed", headers=auth)) == [failed]
    assert _ids(gateway.get(MINE, headers=bob.headers)) == [_bobs(flash_peer, bob)]

    before = len(flash_peer.requests)
    for query in ("page=0", "page_size=101", "page=x", "status=done", "page=1000&page_size=11"):
        refused = gateway.get(f"{MINE}?{query}", headers=auth)
        assert refused.status_code == 400, query
        assert refused.json()["code"] == "invalid_request"
    assert len(flash_peer.requests) == before
    assert gateway.get(MINE).status_code == 401
    assert len(flash_peer.requests) == before

    rows = [r for r in usage() if r.endpoint == MINE and r.status != 401]
    assert [r.status for r in rows] == [200] * 4 + [400] * 5
    assert all(r.upstream == "flash" and r.credits_spent == 0 for r in rows)


def _bobs(flash_peer: Any, bob: Any) -> str:
    with flash_peer.lock:
        return next(t.id for t in flash_peer.timepoints.values() if t.user_id == bob.flash_user_id)


def test_a_lost_generation_answer_is_found_through_mine(
    gateway: Any, auth: Any, flash_peer: Any, flash_proxy: FaultProxy, user: Any
) -> None:
    """Flash made (and charged) the timepoint, the answer never reached the client."""
    # Everything passes (balance, costs) until Flash's answer to the generation, cut mid-body.
    flash_proxy.mode = "cut"
    flash_proxy.cut_after_marker = b"Charlemagne"
    lost = gateway.post(
        "/api/v1/generate",
        json={"query": "The coronation of Charlemagne", "visibility": "private"},
        headers=auth,
    )
    assert lost.status_code == 502
    assert flash_peer.user_balance(user.flash_user_id) == 45
    flash_proxy.mode = "pass"

    listed = gateway.get(MINE, headers=auth)
    (item,) = listed.json()["items"]
    assert item["query"] == "The coronation of Charlemagne" and item["status"] == "completed"
    found = gateway.get(f"/api/v1/timepoints/{item['id']}", headers=auth)
    assert found.status_code == 200 and found.json()["visibility"] == "private"


# --- 2. GET /timepoints/slug/{slug} and 6. privacy by id and slug


def test_slug_and_id_follow_the_same_visibility_rules(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, bob: Any
) -> None:
    mine = flash_peer.add_timepoint(user.flash_user_id, "private")
    theirs_private = flash_peer.add_timepoint(bob.flash_user_id, "private")
    theirs_public = flash_peer.add_timepoint(bob.flash_user_id, "public")
    deleted = flash_peer.add_timepoint(user.flash_user_id, "public", is_deleted=True)

    def slug(timepoint_id: str) -> str:
        return str(flash_peer.timepoint(timepoint_id)["slug"])

    for timepoint_id in (mine, theirs_public):
        by_id = gateway.get(f"/api/v1/timepoints/{timepoint_id}", headers=auth)
        by_slug = gateway.get(f"/api/v1/timepoints/slug/{slug(timepoint_id)}", headers=auth)
        assert by_id.status_code == by_slug.status_code == 200
        assert by_slug.json()["id"] == timepoint_id
        assert not any(key.startswith("blob_") for key in by_slug.json())
    full = gateway.get(f"/api/v1/timepoints/slug/{slug(mine)}?full=true", headers=auth)
    assert full.json()["scene"] is not None

    not_found = {"detail": "Timepoint not found.", "code": "not_found"}
    for timepoint_id in (theirs_private, deleted):
        by_id = gateway.get(f"/api/v1/timepoints/{timepoint_id}", headers=auth)
        by_slug = gateway.get(f"/api/v1/timepoints/slug/{slug(timepoint_id)}", headers=auth)
        assert (by_id.status_code, by_id.json()) == (404, not_found)
        assert (by_slug.status_code, by_slug.json()) == (404, not_found)
    unknown = gateway.get("/api/v1/timepoints/slug/no-such-slug-abc123", headers=auth)
    assert (unknown.status_code, unknown.json()) == (404, not_found)

    before = len(flash_peer.requests)
    for bad in ("a%2Fb", "a..b", "UPPER", "a;b", "x" * 101):
        refused = gateway.get(f"/api/v1/timepoints/slug/{bad}", headers=auth)
        assert refused.status_code == 400 and refused.json()["code"] == "invalid_path", bad
    assert len(flash_peer.requests) == before


# --- 3. DELETE /timepoints/{id}


def test_owner_deletes_softly_then_permanently(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    mine = flash_peer.add_timepoint(user.flash_user_id, "public")
    deleted = gateway.delete(f"/api/v1/timepoints/{mine}", headers=auth)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": mine, "deleted": True, "permanent": False}
    sent = flash_peer.requests_to(f"/api/v1/timepoints/{mine}")[-1]
    assert (sent.method, sent.headers["x-user-id"]) == ("DELETE", user.flash_user_id)
    assert flash_peer.timepoint(mine)["is_deleted"] is True

    # Hidden everywhere through the gateway, while Flash still serves it.
    assert gateway.get(f"/api/v1/timepoints/{mine}", headers=auth).status_code == 404
    slug = flash_peer.timepoint(mine)["slug"]
    assert gateway.get(f"/api/v1/timepoints/slug/{slug}", headers=auth).status_code == 404
    assert gateway.get(f"/api/v1/timepoints/{mine}/characters", headers=auth).status_code == 404
    assert _ids(gateway.get(MINE, headers=auth)) == []

    erased = gateway.delete(f"/api/v1/timepoints/{mine}?permanent=true", headers=auth)
    assert erased.status_code == 200 and erased.json()["permanent"] is True
    assert flash_peer.timepoint(mine) is None
    assert gateway.delete(f"/api/v1/timepoints/{mine}", headers=auth).status_code == 404
    assert (
        gateway.delete(f"/api/v1/timepoints/{MISSING}?permanent=maybe", headers=auth).json()["code"]
        == "invalid_request"
    )

    rows = [r for r in usage() if r.method == "DELETE"]
    assert [r.status for r in rows] == [200, 200, 404, 400]


def test_only_the_owner_deletes_and_never_anonymously(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, bob: Any
) -> None:
    theirs_public = flash_peer.add_timepoint(bob.flash_user_id, "public")
    theirs_private = flash_peer.add_timepoint(bob.flash_user_id, "private")
    ownerless = flash_peer.add_timepoint(None, "public")
    for timepoint_id in (theirs_public, theirs_private, ownerless):
        refused = gateway.delete(f"/api/v1/timepoints/{timepoint_id}", headers=auth)
        assert refused.status_code == 404, refused.text
        assert refused.json() == {"detail": "Timepoint not found.", "code": "not_found"}
        assert flash_peer.timepoint(timepoint_id)["is_deleted"] is False
    deletes = [r for r in flash_peer.requests if r.method == "DELETE"]
    # Every delete carried the caller: without it Flash would skip its owner check.
    assert len(deletes) == 3
    assert all(r.headers.get("x-user-id") == user.flash_user_id for r in deletes)

    before = len(flash_peer.requests)
    assert gateway.delete(f"/api/v1/timepoints/{theirs_public}").status_code == 401
    assert len(flash_peer.requests) == before


def test_account_deletion_documents_the_timepoints(gateway: Any) -> None:
    schema = gateway.get("/api/schema", headers={"Accept": "application/json"}).json()
    description = schema["paths"]["/api/v1/auth/me"]["delete"]["description"]
    assert "timepoints" in description and "DELETE /api/v1/timepoints/" in description


# --- 4. GET /timepoints/{id}/characters


def test_characters_follow_the_timepoints_visibility(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, bob: Any
) -> None:
    mine = flash_peer.add_timepoint(user.flash_user_id, "private")
    response = gateway.get(f"/api/v1/timepoints/{mine}/characters", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["timepoint_id"] == mine and body["total_characters"] == 3
    assert body["speaking_characters"] == 2
    assert set(body["characters"][0]) == {
        "name",
        "role",
        "system_prompt",
        "dialog_context",
        "speaks_in_scene",
        "personality",
        "speaking_style",
        "emotional_state",
        "historical_note",
    }

    public = flash_peer.add_timepoint(bob.flash_user_id, "public")
    assert gateway.get(f"/api/v1/timepoints/{public}/characters", headers=auth).status_code == 200

    for hidden in (
        flash_peer.add_timepoint(bob.flash_user_id, "private"),
        flash_peer.add_timepoint(user.flash_user_id, is_deleted=True),
        MISSING,
    ):
        refused = gateway.get(f"/api/v1/timepoints/{hidden}/characters", headers=auth)
        assert (refused.status_code, refused.json()["code"]) == (404, "not_found")

    running = flash_peer.add_timepoint(user.flash_user_id, status="processing")
    pending = gateway.get(f"/api/v1/timepoints/{running}/characters", headers=auth)
    assert (pending.status_code, pending.json()["code"]) == (404, "characters_not_ready")


# --- 6. Flash's unchecked routes stay unrelayed


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", "/tdf"),
        ("POST", "/export"),
        ("GET", "/sequence"),
    ],
)
def test_flash_routes_without_access_checks_are_not_relayed(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, bob: Any, method: str, suffix: str
) -> None:
    theirs = flash_peer.add_timepoint(bob.flash_user_id, "private")
    for path in (
        f"/api/v1/timepoints/{theirs}{suffix}",
        f"/api/v1/temporal/{theirs}{suffix}",
        f"/api/v1/interactions/sessions/{theirs}",
        f"/api/v1/interactions/{theirs}/chat",
    ):
        response = gateway.request(method, path, headers=auth)
        assert 400 <= response.status_code < 500, path
        assert set(response.json()) >= {"detail", "code"}
    assert flash_peer.requests == []


# --- 7. Streamed timepoints get an owner and the requested visibility


def test_a_private_stream_is_owned_and_private(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, bob: Any
) -> None:
    done = _stream(gateway, auth, visibility="private")
    timepoint_id = done["timepoint_id"]
    stored = flash_peer.timepoint(timepoint_id)
    # What Flash made of it: no owner, public (pitfall 10); the gateway did not send visibility.
    assert (stored["owner"], stored["visibility"]) == (None, "public")
    sent = flash_peer.requests_to("/api/v1/timepoints/generate/stream")[-1]
    assert "visibility" not in json.loads(sent.body)

    own = gateway.get(f"/api/v1/timepoints/{timepoint_id}", headers=auth)
    assert own.status_code == 200 and own.json()["visibility"] == "private"
    assert own.json()["share_url"] is None
    assert _ids(gateway.get(MINE, headers=auth)) == [timepoint_id]
    assert (
        gateway.get(f"/api/v1/timepoints/{timepoint_id}/characters", headers=auth).json()[
            "timepoint_id"
        ]
        == timepoint_id
    )

    slug = stored["slug"]
    for path in (
        f"/api/v1/timepoints/{timepoint_id}",
        f"/api/v1/timepoints/slug/{slug}",
        f"/api/v1/timepoints/{timepoint_id}/characters",
    ):
        hidden = gateway.get(path, headers=bob.headers)
        assert (hidden.status_code, hidden.json()["code"]) == (404, "not_found"), path
    assert _ids(gateway.get(MINE, headers=bob.headers)) == []
    # Bob can neither publish nor delete it, and nothing reaches Flash for it from him.
    before = len(flash_peer.requests)
    url = f"/api/v1/timepoints/{timepoint_id}"
    assert gateway.delete(url, headers=bob.headers).status_code == 404
    assert (
        gateway.patch(
            f"{url}/visibility", json={"visibility": "public"}, headers=bob.headers
        ).status_code
        == 404
    )
    assert len(flash_peer.requests) == before

    # The owner publishes it: now Bob can read it.
    published = gateway.patch(f"{url}/visibility", json={"visibility": "public"}, headers=auth)
    assert published.status_code == 200 and published.json()["visibility"] == "public"
    assert gateway.get(url, headers=bob.headers).status_code == 200


def test_a_public_stream_is_owned_and_its_owner_deletes_it(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, bob: Any
) -> None:
    done = _stream(gateway, auth)
    timepoint_id = done["timepoint_id"]
    url = f"/api/v1/timepoints/{timepoint_id}"
    assert gateway.get(url, headers=bob.headers).json()["visibility"] == "public"
    assert gateway.delete(url, headers=bob.headers).status_code == 404
    assert flash_peer.timepoint(timepoint_id)["is_deleted"] is False

    # Flash would refuse the owner (no owner there): the gateway checked, and sends a system call.
    deleted = gateway.delete(url, headers=auth)
    assert deleted.status_code == 200, deleted.text
    assert flash_peer.timepoint(timepoint_id)["is_deleted"] is True
    sent = [r for r in flash_peer.requests_to(url) if r.method == "DELETE"][-1]
    assert "x-user-id" not in sent.headers
    assert gateway.get(url, headers=auth).status_code == 404
    assert _ids(gateway.get(MINE, headers=auth)) == []
    assert gateway.delete(url, headers=auth).status_code == 404
    erased = gateway.delete(f"{url}?permanent=true", headers=auth)
    assert erased.status_code == 200
    assert flash_peer.timepoint(timepoint_id) is None


def test_mine_merges_streamed_timepoints_with_flashs_list_in_order(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    """Generated alternately, sync and streamed: every page of the merge is in order."""
    made: list[str] = []
    for index in range(7):
        if index % 3 == 1:
            made.append(_stream(gateway, auth, query=f"Streamed moment {index}")["timepoint_id"])
        else:
            response = gateway.post(
                "/api/v1/generate", json={"query": f"Synced moment {index}"}, headers=auth
            )
            made.append(response.json()["id"])
    newest_first = list(reversed(made))
    assert _ids(gateway.get(MINE, headers=auth)) == newest_first
    assert gateway.get(MINE, headers=auth).json()["total"] == 7
    for page_size in (1, 2, 3, 4):
        pages: list[str] = []
        for page in range(1, 8 // page_size + 2):
            listed = gateway.get(f"{MINE}?page={page}&page_size={page_size}", headers=auth)
            pages += _ids(listed)
        assert pages == newest_first, page_size
    assert _ids(gateway.get(f"{MINE}?status=failed", headers=auth)) == []


def test_the_owner_is_recorded_from_a_done_event_without_its_empty_line(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, bob: Any
) -> None:
    """Flash's last event cut at the stream's end (and CRLF, byte by byte): still recorded."""
    flash_peer.stream_line_end = b"\r\n"
    flash_peer.stream_bytewise = True
    flash_peer.stream_final_line_ends = 1
    with gateway.stream(
        "POST", STREAM, json={"query": "Apollo 11", "visibility": "private"}, headers=auth
    ) as response:
        raw = b"".join(response.iter_raw())
    assert b'"event": "done"' in raw
    (timepoint_id,) = _flash_ids(flash_peer)
    assert _ids(gateway.get(MINE, headers=auth)) == [timepoint_id]
    hidden = gateway.get(f"/api/v1/timepoints/{timepoint_id}", headers=bob.headers)
    assert hidden.status_code == 404


def _flash_ids(flash_peer: Any) -> list[str]:
    with flash_peer.lock:
        return list(flash_peer.timepoints)
