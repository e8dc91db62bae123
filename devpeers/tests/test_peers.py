"""The contract peers behave as /work/shared/upstreams.md says, documented bugs included."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from devpeers.clockchain import (
    CAESAR,
    PRIVATE_CAESAR,
    PRIVATE_MOON,
    PRIVATE_OWNER_A,
    ClockchainPeer,
)
from devpeers.flash import COSTS, FlashPeer, gateway_headers, sign_gateway_request
from devpeers.server import start_peer

SECRET = "flash-signing-secret"
SERVICE_KEY = "flash-service-key"
ADMIN = {"X-Admin-Key": "flash-admin-key"}
CC_KEY = {"X-Service-Key": "clockchain-service-key"}


def client(peer: FlashPeer | ClockchainPeer) -> httpx.Client:
    assert peer.url
    return httpx.Client(base_url=peer.url, timeout=5)


def signed(method: str, path: str, user: str | None = None, **extra: str) -> dict[str, str]:
    return {**gateway_headers(SECRET, method, path, user), **extra}


def resolve(c: httpx.Client, external_id: str, **fields: Any) -> httpx.Response:
    path = "/api/v1/users/resolve"
    headers = signed("POST", path, **{"X-Service-Key": SERVICE_KEY})
    return c.post(path, json={"external_id": external_id, **fields}, headers=headers)


def generate(c: httpx.Client, user: str | None, route: str = "sync", **body: Any) -> httpx.Response:
    path = f"/api/v1/timepoints/generate/{route}" if route else "/api/v1/timepoints/generate"
    payload = {"query": "The Ides of March in Rome", **body}
    return c.post(path, json=payload, headers=signed("POST", path, user))


def sse_events(text: str) -> list[dict[str, Any]]:
    chunks = [c for c in text.split("\n\n") if c]
    assert all(c.startswith("data: ") and "\n" not in c for c in chunks)
    return [json.loads(c[len("data: ") :]) for c in chunks]


# --------------------------------------------------------------------------- server


def test_start_peer_port_zero_and_fast_stop() -> None:
    running = start_peer(FlashPeer())
    assert running.port > 0 and running.url == f"http://127.0.0.1:{running.port}"
    assert httpx.get(running.url + "/health").json()["status"] == "healthy"
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/health")


# --------------------------------------------------------------------------- Flash: A1 trust


def test_signature_test_vectors() -> None:
    sig = sign_gateway_request(
        "test-secret", "POST", "/api/v1/timepoints/generate/sync", "user-123", "1700000000"
    )
    assert sig == "v1=1c6d170f596dae34d9e0d8be2fcade09e0f9e8c82d9f3bc0b217c189f53751a1"
    sig = sign_gateway_request("test-secret", "POST", "/api/v1/users/resolve", "", 1700000000)
    assert sig == "v1=40e7e6e1f0eb0683edb433a6fc6e46701d3b959cef1fde78e12a270e1fa5fb04"


def test_gateway_trust_decision_order(flash: FlashPeer) -> None:
    path = "/api/v1/credits/costs"
    with client(flash) as c:
        assert c.get(path, headers=signed("GET", path)).status_code == 200
        bad = signed("GET", path)
        bad["X-Gateway-Signature"] = "v1=" + "0" * 64
        r = c.get(path, headers={**bad, "X-Service-Key": SERVICE_KEY})  # no legacy fallback
        assert (r.status_code, r.json()) == (403, {"error": "Invalid gateway signature"})
        stale = gateway_headers(SECRET, "GET", path, timestamp=int(time.time()) - 301)
        assert c.get(path, headers=stale).json() == {"error": "Invalid gateway signature"}
        # The query string is not signed; the path is.
        assert c.get(path + "?x=1", headers=signed("GET", path)).status_code == 200
        r = c.get(path, headers={"X-Service-Key": SERVICE_KEY})  # strict mode
        assert (r.status_code, r.json()) == (403, {"error": "Gateway signature required"})
        only_ts = {"X-Gateway-Timestamp": str(int(time.time()))}
        assert c.get(path, headers=only_ts).json() == {"error": "Gateway signature required"}
        assert c.get("/health").status_code == 200  # open path
        assert c.get("/nope").status_code == 403  # middleware runs before routing

    flash.require_signed = False
    with client(flash) as c:
        r = c.get(path, headers={"X-Service-Key": "wrong"})
        assert (r.status_code, r.json()) == (403, {"error": "Invalid or missing service key"})
        assert c.get(path, headers={"X-Service-Key": SERVICE_KEY}).status_code == 200
        uid = resolve(c, "legacy-user").json()["user_id"]
        # Legacy key = system call: X-User-Id is ignored, so a user-only route says 401.
        balance = "/api/v1/credits/balance"
        r = c.get(balance, headers={"X-Service-Key": SERVICE_KEY, "X-User-Id": uid})
        assert r.status_code == 401
        assert r.json() == {"error": "Authentication required", "detail": None}

    open_peer = FlashPeer(service_key="", signing_secret="", require_signed=True)
    assert not open_peer.middleware_installed


def test_user_lookup_by_uuid_or_external_id(flash: FlashPeer) -> None:
    path = "/api/v1/credits/balance"
    with client(flash) as c:
        uid = resolve(c, "auth0|ada").json()["user_id"]
        for ident in (uid, "auth0|ada"):
            r = c.get(path, headers=signed("GET", path, ident, **{"X-Request-ID": "rid-1"}))
            assert r.json() == {"balance": 50, "lifetime_earned": 50, "lifetime_spent": 0}
            assert r.headers["x-request-id"] == "rid-1"
        r = c.get(path, headers=signed("GET", path, "ghost"))
        assert r.status_code == 404
        assert r.json() == {
            "error": "User ghost not found. Call POST /api/v1/users/resolve first.",
            "detail": None,
        }
        # The user id is covered by the signature.
        h = signed("GET", path, uid)
        h["X-User-Id"] = "auth0|ada"
        assert c.get(path, headers=h).json() == {"error": "Invalid gateway signature"}


def test_routing_404_405_307_and_request_log(flash: FlashPeer) -> None:
    with client(flash) as c:
        path = "/api/v1/nothing"
        r = c.get(path, headers=signed("GET", path))
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
        path = "/api/v1/credits/costs"
        r = c.post(path, headers=signed("POST", path))
        assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})
        path = "/api/v1/credits/costs/"
        r = c.get(path, headers=signed("GET", path))
        assert r.status_code == 307
        assert r.headers["location"].endswith("/api/v1/credits/costs")
        flash.reset_requests()
        path = "/api/v1/timepoints/a%20b"
        c.get(path, headers=signed("GET", "/api/v1/timepoints/a b", None, **{"X-Foo": "1"}))
    [rec] = flash.requests_to("/api/v1/timepoints/")
    assert (rec.raw_path, rec.path, rec.method) == (path, "/api/v1/timepoints/a b", "GET")
    assert rec.headers["x-foo"] == "1" and "x-gateway-signature" in rec.headers


# --------------------------------------------------------------------------- Flash: users, credits


def test_resolve_is_idempotent_and_needs_service_key(flash: FlashPeer) -> None:
    with client(flash) as c:
        first = resolve(c, "ext-1", email="a@example.com", display_name="A")
        again = resolve(c, "ext-1", email="changed@example.com")
        assert first.status_code == again.status_code == 200
        assert first.json()["created"] is True and again.json()["created"] is False
        assert first.json()["user_id"] == again.json()["user_id"]
        path = "/api/v1/users/resolve"
        r = c.post(path, json={"external_id": "x"}, headers=signed("POST", path))
        assert (r.status_code, r.json()) == (403, {"error": "Invalid service key", "detail": None})
        r = c.post(path, json={}, headers=signed("POST", path, **{"X-Service-Key": SERVICE_KEY}))
        assert r.status_code == 422
        assert r.json()["detail"][0]["type"] == "missing"
        assert r.json()["detail"][0]["loc"] == ["body", "external_id"]
    uid = first.json()["user_id"]
    assert flash.users[uid].email == "a@example.com"  # never updated later
    assert flash.user_balance(uid) == 50 and flash.ledger_for(uid) == []  # no signup ledger row


def test_costs_table_has_exactly_18_keys(flash: FlashPeer) -> None:
    path = "/api/v1/credits/costs"
    with client(flash) as c:
        costs = c.get(path, headers=signed("GET", path)).json()["costs"]
    assert costs == COSTS and len(costs) == 18
    assert costs["generate_hd"] == 10 and costs["conductor_pro_sim"] == 15


def test_admin_grant_is_not_idempotent(flash: FlashPeer) -> None:
    uid = flash.add_user("granted")
    path = "/api/v1/credits/admin/grant"
    body = {"user_id": uid, "amount": 7, "transaction_type": "stripe_purchase", "description": "x"}
    with client(flash) as c:
        h = signed("POST", path, **ADMIN)
        assert c.post(path, json=body, headers=h).json() == {"balance": 57, "granted": 7}
        assert c.post(path, json=body, headers=h).json() == {"balance": 64, "granted": 7}
        odd = {"user_id": uid, "amount": 1, "transaction_type": "bogus"}
        assert c.post(path, json=odd, headers=h).status_code == 200
        r = c.post(path, json={**body, "user_id": "granted"}, headers=h)  # external_id refused
        assert (r.status_code, r.json()["error"]) == (404, "User not found")
        r = c.post(path, json={**body, "amount": 0}, headers=h)
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "greater_than"
        r = c.post(path, json=body, headers=signed("POST", path, **{"X-Admin-Key": "no"}))
        assert (r.status_code, r.json()["error"]) == (403, "Invalid admin key")
        no_account = flash.add_user("no-account", with_account=False)
        r = c.post(path, json={**body, "user_id": no_account}, headers=h)
        assert r.status_code == 500
        hist = "/api/v1/credits/history"
        rows = c.get(hist, headers=signed("GET", hist, uid)).json()
        assert [row["type"] for row in rows] == [
            "admin_grant",
            "stripe_purchase",
            "stripe_purchase",
        ]
        assert rows[-1]["description"] == "x" and rows[0]["description"] == "Manual top-up"
        r = c.get(hist + "?limit=101", headers=signed("GET", hist, uid))
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["query", "limit"]
        assert len(c.get(hist + "?limit=1&offset=1", headers=signed("GET", hist, uid)).json()) == 1


def test_grant_then_drop_applies_the_grant_and_drops_the_connection(flash: FlashPeer) -> None:
    uid = flash.add_user("dropped")
    flash.grant_then_drop = 1
    path = "/api/v1/credits/admin/grant"
    with client(flash) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(path, json={"user_id": uid, "amount": 5}, headers=signed("POST", path, **ADMIN))
        assert flash.user_balance(uid) == 55
        r = c.post(path, json={"user_id": uid, "amount": 5}, headers=signed("POST", path, **ADMIN))
        assert r.json() == {"balance": 60, "granted": 5}


# --------------------------------------------------------------------------- Flash: generation


@pytest.mark.parametrize(
    ("preset", "cost"),
    [(None, 5), ("hd", 10), ("HD", 5), ("frontier", 5), ("free_distillable", 5), ("nope", 5)],
)
def test_sync_charges_by_raw_preset(flash: FlashPeer, preset: str | None, cost: int) -> None:
    uid = flash.add_user("payer")
    with client(flash) as c:
        r = generate(c, uid, preset=preset, visibility="Private")
    assert r.status_code == 200
    tp = r.json()
    assert tp["status"] == "completed" and tp["visibility"] == "public"  # fails open
    assert tp["preset_used"] == (preset or "balanced")
    assert flash.user_balance(uid) == 50 - cost
    [row] = flash.ledger_for(uid)
    assert (row["amount"], row["balance_after"], row["type"]) == (-cost, 50 - cost, "generation")


def test_charging_rules(flash: FlashPeer) -> None:
    uid = flash.add_user("rules")
    with client(flash) as c:
        assert generate(c, None).status_code == 200  # system call: nothing charged
        flash.generation_outcome = "failed"
        r = generate(c, uid, **{})
        assert r.json()["status"] == "failed" and flash.user_balance(uid) == 45  # not refunded
        flash.generation_outcome = "error"
        r = generate(c, uid)
        assert r.status_code == 500 and flash.user_balance(uid) == 45  # refunded
        flash.generation_outcome = "completed"
        path = "/api/v1/timepoints/generate/sync"
        metered = signed("POST", path, uid, **{"X-Gateway-Metered": "true"})
        c.post(path, json={"query": "Metered is ignored on sync"}, headers=metered)
        assert flash.user_balance(uid) == 40
        # Pitfall 7: insufficient at charge time -> 500, and the bogus refund mints credits.
        flash.set_balance(uid, 3)
        r = generate(c, uid)
        assert r.status_code == 500
        assert r.json() == {"error": "Insufficient credits: have 3, need 5", "detail": None}
        assert flash.user_balance(uid) == 8
        flash.set_balance(uid, 0)
        r = generate(c, uid, route="stream")
        assert r.status_code == 500 and flash.user_balance(uid) == 0  # no minting on stream
        r = generate(c, uid, route="")
        assert r.status_code == 500 and flash.user_balance(uid) == 0
        r = generate(c, uid, query="no")
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "string_too_short"


def test_async_generate_and_private_reads(flash: FlashPeer) -> None:
    owner = flash.add_user("owner")
    other = flash.add_user("other")
    with client(flash) as c:
        r = generate(c, owner, route="", visibility="private", request_context={"k": 1})
        assert r.json()["status"] == "processing" and r.json()["request_context"] == {"k": 1}
        assert flash.user_balance(owner) == 45
        tp_id = r.json()["id"]
        path = f"/api/v1/timepoints/{tp_id}"
        deadline = time.monotonic() + 2
        while flash.timepoint(tp_id)["status"] == "processing":  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.get(path, headers=signed("GET", path, owner)).json()["visibility"] == "private"
        r = c.get(path, headers=signed("GET", path, other))
        assert (r.status_code, r.json()["error"]) == (403, "This timepoint is private")
        vis = path + "/visibility"
        r = c.patch(vis, json={"visibility": "public"}, headers=signed("PATCH", vis, other))
        assert r.json()["error"] == "Only the owner can change visibility"
        r = c.patch(vis, json={"visibility": "PUBLIC"}, headers=signed("PATCH", vis, owner))
        assert r.status_code == 400
        # No user -> the owner check is skipped (pitfall 5).
        r = c.patch(vis, json={"visibility": "public"}, headers=signed("PATCH", vis))
        assert r.json()["visibility"] == "public"
        mine = "/api/v1/users/me/timepoints"
        assert c.get(mine, headers=signed("GET", mine, owner)).json()["total"] == 1
        r = c.delete(path, headers=signed("DELETE", path, other))
        assert r.json()["error"] == "Only the owner can delete this timepoint"
        r = c.delete(path, headers=signed("DELETE", path, owner))
        assert r.json()["deleted"] is True
        assert c.get(path, headers=signed("GET", path)).json()["is_deleted"] is True
        assert c.get(mine, headers=signed("GET", mine, owner)).json()["total"] == 0
        lst = "/api/v1/timepoints"
        flash.add_timepoint(owner, "private")
        flash.add_timepoint(other, "public")
        assert c.get(lst, headers=signed("GET", lst)).json()["total"] == 1
        assert c.get(lst, headers=signed("GET", lst, owner)).json()["total"] == 2


def test_stream_event_format_metering_and_orphaning(flash: FlashPeer) -> None:
    uid = flash.add_user("streamer")
    path = "/api/v1/timepoints/generate/stream"
    with client(flash) as c:
        h = signed("POST", path, uid, **{"X-Gateway-Metered": "TRUE"})
        r = c.post(path, json={"query": "Moon landing", "generate_image": True}, headers=h)
        assert flash.user_balance(uid) == 50  # metered: not charged
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        events = sse_events(r.text)
        assert all(set(e) == {"event", "step", "data", "progress", "error"} for e in events)
        assert events[0]["event"] == "start" and events[-1]["event"] == "done"
        assert events[0]["data"]["preset"] == "balanced"
        assert {e["event"] for e in events[1:-1]} == {"step_complete"}
        assert events[-2]["step"] == "image_generation" and events[-1]["progress"] == 100
        done = events[-1]["data"]
        assert done["saved"] is True and done["has_image"] is True
        tp = flash.timepoint(done["timepoint_id"])
        assert tp is not None and tp["owner"] is None and tp["visibility"] == "public"
        r = c.post(
            path,
            json={"query": "Charged stream", "visibility": "private"},
            headers=signed("POST", path, uid),
        )
        assert flash.user_balance(uid) == 45
        flash.generation_outcome = "failed"
        events = sse_events(generate(c, uid, route="stream").text)
        assert [e["event"] for e in events] == ["start", "step_error", "done"]
        assert events[-1]["data"]["status"] == "failed" and flash.user_balance(uid) == 40


def test_stream_cut_and_client_disconnect(flash: FlashPeer) -> None:
    path = "/api/v1/timepoints/generate/stream"
    flash.stream_cut_after = 2
    with client(flash) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            generate(c, None, route="stream")
    flash.stream_cut_after = None
    flash.stream_step_delay = 0.2
    assert flash.url
    port = int(flash.url.rsplit(":", 1)[1])
    body = json.dumps({"query": "Someone walks away"}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in signed("POST", path).items())
    raw = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(raw)
        received = b""
        while b"data: " not in received:
            received += sock.recv(65536)
        closed_at = time.monotonic()
    deadline = closed_at + 1
    while flash.stream_disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flash.stream_disconnects == 1
    assert flash.stream_disconnect_times[0] - closed_at < 1
    assert flash.active_streams == 0


def test_fail_next_spares_health(flash: FlashPeer) -> None:
    flash.fail_next = 1
    path = "/api/v1/credits/costs"
    with client(flash) as c:
        assert c.get("/health").status_code == 200
        r = c.get(path, headers=signed("GET", path))
        assert (r.status_code, r.json()) == (
            500,
            {"error": "Internal server error", "detail": None},
        )
        assert c.get(path, headers=signed("GET", path)).status_code == 200


def test_lost_update_on_sync(flash: FlashPeer) -> None:
    """Pitfall 11: a grant landing during a sync generation is overwritten (ledger keeps it)."""
    uid = flash.add_user("racer")
    flash.generation_delay = 0.3
    result: dict[str, int] = {}

    def run() -> None:
        with client(flash) as c:
            result["status"] = generate(c, uid).status_code

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.1)
    path = "/api/v1/credits/admin/grant"
    with client(flash) as c:
        c.post(path, json={"user_id": uid, "amount": 100}, headers=signed("POST", path, **ADMIN))
    worker.join()
    assert result["status"] == 200
    assert flash.user_balance(uid) == 45
    assert [row["amount"] for row in flash.ledger_for(uid)] == [100, -5]


# --------------------------------------------------------------------------- Clockchain


def test_clockchain_key_rules(clockchain: ClockchainPeer) -> None:
    with client(clockchain) as c:
        r = c.get("/api/v1/browse")
        assert r.status_code == 422
        assert r.json() == {
            "detail": [
                {
                    "type": "missing",
                    "loc": ["header", "X-Service-Key"],
                    "msg": "Field required",
                    "input": None,
                }
            ]
        }
        r = c.get("/api/v1/browse", headers={"X-Service-Key": "wrong"})
        assert (r.status_code, r.json()) == (403, {"detail": "Invalid service key"})
        assert c.get("/api/v1/moments", headers={"X-Service-Key": "wrong"}).status_code == 403
        assert c.get("/api/v1/moments").status_code == 200  # public: key optional
        assert c.get("/api/v1/stats").status_code == 200
        assert c.get("/health").json()["service"] == "timepoint-clockchain"
    unset = ClockchainPeer(service_key="")
    assert unset.service_key == ""


def test_clockchain_visibility_rules(clockchain: ClockchainPeer) -> None:
    with client(clockchain) as c:
        listed = c.get("/api/v1/moments", headers=CC_KEY, params={"limit": 100}).json()
        paths = {i["path"] for i in listed["items"]}
        assert PRIVATE_CAESAR not in paths and CAESAR in paths and listed["total"] == 7
        item = listed["items"][0]
        assert isinstance(item["month"], str) and item["image_url"] is None
        assert item["schema_version"] == "0.1"
        assert c.get("/api/v1/moments" + PRIVATE_CAESAR).json() == {"detail": "Moment not found"}
        # Pitfall 18: with the key, any private node comes back, whoever owns it.
        private = c.get("/api/v1/moments" + PRIVATE_CAESAR, headers=CC_KEY).json()
        assert private["visibility"] == "private" and private["created_by"] == PRIVATE_OWNER_A
        detail = c.get("/api/v1/moments" + CAESAR + "/").json()
        assert detail["month"] == 3 and isinstance(detail["month"], int)
        assert PRIVATE_CAESAR in {e["target"] for e in detail["edges"]}  # edge leak
        assert all(e["source"] == CAESAR for e in detail["edges"])
        tdf = c.get("/api/v1/moments" + CAESAR, params={"format": "tdf"}).json()
        assert tdf["source"] == "clockchain" and tdf["id"] == CAESAR
        hist = c.get("/api/v1/moments" + CAESAR + "/history", headers=CC_KEY)
        assert hist.status_code == 404  # shadowed by the detail route
        nb = c.get("/api/v1/graph/neighbors" + PRIVATE_MOON, headers=CC_KEY).json()
        assert isinstance(nb, list) and nb[0]["name"] == "Apollo 11 Moon Landing"
        nb = c.get("/api/v1/graph/neighbors" + CAESAR, headers=CC_KEY).json()
        assert PRIVATE_OWNER_A in {n["created_by"] for n in nb}
        assert c.get("/api/v1/graph/neighbors/nope", headers=CC_KEY).status_code == 404
        stats = c.get("/api/v1/stats").json()
        assert stats["total_nodes"] == 9 and stats["total_edges"] == 5
        found = c.get("/api/v1/search", params={"q": "private"}, headers=CC_KEY).json()
        assert found == []
        found = c.get("/api/v1/search", params={"q": "caesar"}, headers=CC_KEY).json()
        assert found[0]["path"] == CAESAR and found[0]["score"] == 1.0
        assert c.get("/api/v1/search", headers=CC_KEY).status_code == 422
        browse = c.get("/api/v1/browse/-44/march", headers=CC_KEY).json()
        assert browse == {
            "prefix": "/-44/march",
            "items": [{"segment": "15", "count": 1, "label": "15"}],
        }
        assert c.get("/api/v1/random", headers=CC_KEY).json()["visibility"] == "public"
        assert set(c.get("/api/v1/today", headers=CC_KEY).json()) == {"month", "day", "events"}
        clockchain.reset_requests()
        c.post("/api/v1/agents/register", json={})
        assert [r.path for r in clockchain.requests] == ["/api/v1/agents/register"]


def test_clockchain_rate_limit(clockchain: ClockchainPeer) -> None:
    with client(clockchain) as c:
        for _ in range(3):
            assert c.get("/api/v1/moments", headers={"X-Service-Key": "bad"}).status_code == 403
        statuses = [c.get("/api/v1/moments", headers=CC_KEY).status_code for _ in range(61)]
        assert statuses[:60] == [200] * 60
        last = c.get("/api/v1/moments", headers=CC_KEY)
        assert (last.status_code, last.json()) == (429, {"detail": "60 per 1 minute"})
        assert "retry-after" not in last.headers
        assert c.get("/api/v1/moments").status_code == 200  # keyless: the peer-IP bucket
        assert c.get("/api/v1/search?q=a", headers=CC_KEY).status_code == 200  # not limited
    clockchain.fail_next = 1
    with client(clockchain) as c:
        r = c.get("/api/v1/stats")
        assert (r.status_code, r.text) == (500, "Internal Server Error")


def test_unknown_fields_reach_every_object_but_free_form_content(
    flash: FlashPeer, clockchain: ClockchainPeer
) -> None:
    """`unknown_fields` adds fields no contract has to every object of every answer (records in
    records included, and each stream event and its data), and leaves alone what the contract
    leaves free-form (Flash's cost table, the echoed request_context, generated content)."""
    from devpeers._asgi import UNKNOWN_FIELDS

    extra = set(UNKNOWN_FIELDS)
    uid = flash.add_user("dressed")
    tp_id = flash.add_timepoint(uid, "private", request_context={"mine": 1})
    flash.unknown_fields = clockchain.unknown_fields = True
    with client(flash) as c:
        path = f"/api/v1/timepoints/{tp_id}"
        full = c.get(path, params={"full": "true"}, headers=signed("GET", path, uid)).json()
        assert extra <= set(full) and extra <= set(full["metadata"])
        assert full["request_context"] == {"mine": 1} and not extra & set(full["scene"])
        assert not extra & set(full["characters"]) and not extra & set(full["metadata"]["graph"])
        path += "/characters"
        cast = c.get(path, headers=signed("GET", path, uid)).json()
        assert extra <= set(cast) and all(extra <= set(item) for item in cast["characters"])
        costs = c.get("/api/v1/credits/costs", headers=signed("GET", "/api/v1/credits/costs"))
        assert costs.json()["costs"] == COSTS and extra <= set(costs.json())
        events = sse_events(generate(c, uid, route="stream").text)
        assert all(extra <= set(event) for event in events)
        assert all(extra <= set(event["data"]) for event in events)
    with client(clockchain) as c:
        detail = c.get("/api/v1/moments" + CAESAR).json()
        assert extra <= set(detail) and all(extra <= set(edge) for edge in detail["edges"])
        listed = c.get("/api/v1/moments").json()
        assert all(extra <= set(item) for item in listed["items"])
