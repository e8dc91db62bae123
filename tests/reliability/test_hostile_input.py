"""Hostile input against the running gateway (uvicorn on loopback, the real ASGI stack): each
attempt gets a 4xx `{"detail","code"}` answer and the contract peers record that nothing reached
them. Path traversal per relay parameter lives in `relay/tests/test_paths.py`; this extends it to
credentials, bodies, content types, headers and query strings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from accounts.tests.auth0_server import AUDIENCE, FakeAuth0, SigningKey
from tests.reliability.conftest import assert_json_error

pytestmark = pytest.mark.django_db(transaction=True)

UUID = "0b6c3f0e-2f7a-4c1e-9d2a-3c4b5a6f7e80"
RELAY_READS = ["/api/v1/credits/balance", "/api/v1/moments", "/api/v1/search?q=rome"]


def _b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _nothing_reached(*peers: Any) -> None:
    for peer in peers:
        assert peer.requests == [], [r.path for r in peer.requests]


def raw_exchange(url: str, payload: bytes, timeout: float = 5) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        decoded = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            decoded += rest[:size]
            body = rest[size + 2 :]
        body = decoded
    return int(head.split(b" ")[1]), body


@pytest.fixture
def auth0(settings: Any) -> Iterator[FakeAuth0]:
    fake = FakeAuth0()
    fake.add_key()
    settings.AUTH0_ISSUER = fake.issuer
    settings.AUTH0_JWKS_URL = fake.jwks_url
    settings.AUTH0_USERINFO_URL = f"{fake.url}/userinfo"
    settings.AUTH0_AUDIENCE = AUDIENCE
    settings.AUTH0_JWKS_TIMEOUT = 0.5
    settings.AUTH0_LEEWAY_SECONDS = 5
    yield fake
    fake.stop()


# --- Credentials


def _jwt_attacks(auth0: FakeAuth0) -> dict[str, str]:
    key = auth0.keys[0]
    claims = auth0.claims("auth0|mallory")
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = _b64({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    hs_body = _b64(claims)
    hs_sig = hmac.new(public_pem, f"{hs_header}.{hs_body}".encode(), hashlib.sha256).digest()
    valid = auth0.token("auth0|mallory")
    head, body, sig = valid.split(".")
    return {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{_b64(claims)}.",
        "alg_none_upper": f"{_b64({'alg': 'NONE', 'kid': key.kid})}.{_b64(claims)}.",
        "hs256_with_public_key": f"{hs_header}.{hs_body}.{_b64(hs_sig)}",
        "missing_sub": auth0.token(sub=None),  # type: ignore[arg-type]
        "missing_exp": auth0.token(exp=None),
        "expired": auth0.token(exp=1),
        "wrong_audience": auth0.token(aud="https://elsewhere.example"),
        "claims_swapped": f"{head}.{_b64({**claims, 'sub': 'auth0|admin'})}.{sig}",
        "signature_stripped": f"{head}.{body}.",
        "foreign_key_with_jku": jwt.encode(
            claims,
            SigningKey("attacker", slot=7).private,
            algorithm="RS256",
            headers={"kid": "attacker", "jku": "http://127.0.0.1:9/jwks.json"},
        ),
        "not_a_jwt": "a.b.c",
        "huge_token": f"{head}.{_b64({**claims, 'pad': 'A' * 6000})}.{sig}",
        "unicode": "ünïcødé.tøkén.sig",
    }


def test_jwt_attacks_on_relay_routes_are_401_and_never_relayed(
    gateway: httpx.Client, auth0: FakeAuth0, flash_peer: Any, clockchain_peer: Any, settings: Any
) -> None:
    settings.AUTH_FAILURE_LIMIT_PER_MINUTE = 10_000  # tested in accounts; here: each is a 401
    for name, token in _jwt_attacks(auth0).items():
        for path in RELAY_READS:
            try:
                response = gateway.get(path, headers={"Authorization": f"Bearer {token}"})
            except UnicodeEncodeError:
                continue  # httpx refuses to send non-latin-1 headers; covered by raw below
            assert_json_error(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
    _nothing_reached(flash_peer, clockchain_peer)


def test_huge_authorization_header_is_refused_before_the_app(
    live_url: str, flash_peer: Any, clockchain_peer: Any
) -> None:
    token = "e" * 200_000
    request = (
        f"GET /api/v1/credits/balance HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    status, _ = raw_exchange(live_url, request)
    assert 400 <= status < 500, status
    _nothing_reached(flash_peer, clockchain_peer)


def test_malformed_api_keys_are_401_and_never_relayed(
    gateway: httpx.Client,
    user: Any,
    make_key: Any,
    flash_peer: Any,
    clockchain_peer: Any,
    settings: Any,
) -> None:
    settings.AUTH_FAILURE_LIMIT_PER_MINUTE = 10_000
    _, good = make_key(user)
    last = good[-1]
    hostile = {
        "too_short": good[:-5],
        "too_long": good + "A",
        "bad_checksum": good[:-1] + ("A" if last != "A" else "B"),
        "bad_alphabet": good[:-8] + "!@#$%^&*",
        "prefix_only": "tp_live_",
        "wrong_mode": good.replace("tp_live_", "tp_prod_"),
        "test_for_live": good.replace("tp_live_", "tp_test_"),
        "whitespace_inside": good[:12] + " " + good[13:],
        "sql": "tp_live_' OR '1'='1",
        "revoked_shape": "tp_live_" + "0" * 38,
    }
    for name, key in hostile.items():
        for header in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
            response = gateway.get("/api/v1/credits/balance", headers=header)
            assert_json_error(response, 401)
            assert response.status_code == 401, name
    _nothing_reached(flash_peer, clockchain_peer)


# --- Bodies and content types


def test_oversized_body_is_413_before_anything(
    gateway: httpx.Client, auth: dict[str, str], flash_peer: Any
) -> None:
    big = json.dumps({"query": "x" * 2_000_000}).encode()
    response = gateway.post(
        "/api/v1/generate", content=big, headers={**auth, "Content-Type": "application/json"}
    )
    assert_json_error(response, 413, "payload_too_large")
    keys = gateway.post(
        "/api/v1/keys", content=big, headers={**auth, "Content-Type": "application/json"}
    )
    assert_json_error(keys, 413)
    _nothing_reached(flash_peer)


@pytest.mark.parametrize(
    "path",
    ["/api/v1/generate", "/api/v1/generate/stream", "/api/v1/keys", "/api/v1/billing/checkout"],
)
def test_deeply_nested_json_is_400(
    gateway: httpx.Client, auth: dict[str, str], flash_peer: Any, path: str
) -> None:
    """Regression: 100 000 nested arrays made `json.loads` raise RecursionError, a 500."""
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"query":' * 50_000 + b"1" + b"}" * 50_000):
        response = gateway.post(
            path, content=body, headers={**auth, "Content-Type": "application/json"}
        )
        assert_json_error(response, 400)
    assert flash_peer.requests_to("/api/v1/timepoints") == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"query": "Apollo 11"}'),
        ("application/x-www-form-urlencoded", b"query=Apollo+11"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=query\r\n\r\nApollo\r\n--x--\r\n",
        ),
        ("application/json", b"\xff\xfe{not json"),
        ("application/json", b'"a string"'),
        ("application/json", b"[1, 2]"),
        ("application/json", b'{"query": "\\ud800"}'),
        ("application/json", b'{"query": NaN}'),
    ],
)
def test_wrong_content_types_and_bodies_are_4xx(
    gateway: httpx.Client, auth: dict[str, str], flash_peer: Any, content_type: str, body: bytes
) -> None:
    for path in ("/api/v1/generate", "/api/v1/keys"):
        response = gateway.post(path, content=body, headers={**auth, "Content-Type": content_type})
        assert 400 <= response.status_code < 500, (path, content_type, response.status_code)
        assert_json_error(response, response.status_code)
    assert flash_peer.requests_to("/api/v1/timepoints") == []


# --- Headers and query strings


@pytest.mark.parametrize(
    "header_line",
    [
        b"X-Test: a\rInjected: 1",
        b"X-Test: a\nInjected: 1",
        b"X-Test: a\x00b",
        b" X-Folded: continuation",
        b"Bad Header: x",
    ],
)
def test_header_injection_is_refused_by_the_server(
    live_url: str, session_token: str, flash_peer: Any, clockchain_peer: Any, header_line: bytes
) -> None:
    request = (
        b"GET /api/v1/credits/balance HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + f"Authorization: Bearer {session_token}\r\n".encode()
        + header_line
        + b"\r\n\r\n"
    )
    status, _ = raw_exchange(live_url, request)
    assert status == 400, status
    _nothing_reached(flash_peer, clockchain_peer)


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/search?q=%00",
        "/api/v1/search?q=a%0d%0aX-Injected:%201",
        "/api/v1/search?q=%1b%5b31m",
        "/api/v1/moments?entity=a%00b",
        "/api/v1/moments?q=" + "x" * 5000,
        "/api/v1/moments?limit=%00",
        "/api/v1/moments?limit=1e3",
        "/api/v1/moments?offset=-1",
        "/api/v1/moments?min_confidence=nan",
        "/api/v1/moments?min_confidence=inf",
        "/api/v1/moments?sort=year%00",
        "/api/v1/moments?year_from=%F0%9F%98%80",
        "/api/v1/credits/history?limit=99999999999999999999999",
        f"/api/v1/timepoints/{UUID}?full=%00",
        "/api/v1/moments/caf%C3%A9",
        "/api/v1/moments/%E2%80%AEevil",
        "/api/v1/moments/a%C0%AFb",  # overlong UTF-8 slash
        "/api/v1/browse/%EF%BC%8E%EF%BC%8E",  # fullwidth dots
    ],
)
def test_nul_unicode_and_control_characters_in_queries_and_paths_are_400(
    live_url: str, session_token: str, flash_peer: Any, clockchain_peer: Any, target: str
) -> None:
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Bearer {session_token}\r\n\r\n"
    ).encode()
    status, body = raw_exchange(live_url, request)
    assert status == 400, (target, status, body[:200])
    assert set(json.loads(body)) >= {"detail", "code"}
    _nothing_reached(flash_peer, clockchain_peer)


def test_unicode_search_text_is_relayed_encoded(
    gateway: httpx.Client, auth: dict[str, str], clockchain_peer: Any
) -> None:
    """Printable unicode is a legitimate search; it reaches Clockchain as one encoded value."""
    response = gateway.get("/api/v1/search", params={"q": "Jules César &limit=1000"}, headers=auth)
    assert response.status_code == 200
    (sent,) = [r for r in clockchain_peer.requests if r.path.endswith("/search")]
    from urllib.parse import parse_qs

    assert parse_qs(sent.query_string)["q"] == ["Jules César &limit=1000"]


# --- Identity headers: never toward an upstream, on any route, in any case


IDENTITY_NAMES = [
    "X-User-Id",
    "x-user-id",
    "X-USER-ID",
    "X-User-ID",
    "X-Service-Key",
    "x-SERVICE-key",
    "X-Admin-Key",
    "X-ADMIN-KEY",
    "X-Gateway-Metered",
    "X-Gateway-Signature",
    "x-gateway-timestamp",
    "X-Gateway-Anything",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "x-forwarded-proto",
    "X-Forwarded-User",
    "Forwarded",
    "X-Real-IP",
]
MARK = "smuggled-7f3a"


def test_identity_headers_never_reach_either_peer_on_any_route(
    live_url: str, session_token: str, flash_peer: Any, clockchain_peer: Any, user: Any
) -> None:
    from devpeers.clockchain import CAESAR

    routes = [
        ("GET", "/api/v1/credits/balance", b""),
        ("GET", "/api/v1/credits/history", b""),
        ("GET", "/api/v1/credits/costs", b""),
        ("POST", "/api/v1/generate", b'{"query": "Apollo 11"}'),
        ("POST", "/api/v1/generate/stream", b'{"query": "Apollo 11"}'),
        ("POST", "/api/v1/generate/async", b'{"query": "Apollo 11"}'),
        ("GET", f"/api/v1/timepoints/{UUID}", b""),
        ("PATCH", f"/api/v1/timepoints/{UUID}/visibility", b'{"visibility": "public"}'),
        ("GET", "/api/v1/timepoints/mine", b""),
        ("GET", "/api/v1/timepoints/slug/some-slug-abc123", b""),
        ("GET", f"/api/v1/timepoints/{UUID}/characters", b""),
        ("DELETE", f"/api/v1/timepoints/{UUID}", b""),
        ("GET", "/api/v1/moments", b""),
        ("GET", "/api/v1/moments" + CAESAR, b""),
        ("GET", "/api/v1/browse", b""),
        ("GET", "/api/v1/browse/-44", b""),
        ("GET", "/api/v1/today", b""),
        ("GET", "/api/v1/random", b""),
        ("GET", "/api/v1/search?q=rome", b""),
        ("GET", "/api/v1/graph/neighbors" + CAESAR, b""),
        ("GET", "/api/v1/stats", b""),
    ]
    # Raw bytes: several spellings of one header name in one request (a client library would
    # merge them), each carrying the mark.
    smuggled = "".join(f"{name}: {MARK}-{i}\r\n" for i, name in enumerate(IDENTITY_NAMES))
    for method, path, body in routes:
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: Bearer {session_token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{smuggled}\r\n"
        ).encode() + body
        status, _ = raw_exchange(live_url, request)
        assert status < 500, (path, status)
    recorded = [*flash_peer.requests, *clockchain_peer.requests]
    assert len(recorded) >= len(routes)
    for sent in recorded:
        for name, value in sent.headers.items():
            assert MARK not in value, (sent.path, name, value)
        if "x-user-id" in sent.headers:
            assert sent.headers["x-user-id"] == user.flash_user_id


def test_unknown_llm_params_are_400_not_500(
    gateway: httpx.Client, auth: dict[str, str], flash_peer: Any
) -> None:
    """Regression (found by schemathesis): any `llm_params` object crashed the nested
    serializer's unknown-key check (500)."""
    hostile: list[dict[str, Any]] = [{"temperature": 0.5, "evil": 1}, {"": "x"}, {"__class__": {}}]
    for params in hostile:
        response = gateway.post(
            "/api/v1/generate", json={"query": "Apollo 11", "llm_params": params}, headers=auth
        )
        assert_json_error(response, 400, "invalid_request")
    ok = gateway.post(
        "/api/v1/generate",
        json={"query": "Apollo 11", "llm_params": {"temperature": 0.5}},
        headers=auth,
    )
    assert ok.status_code == 200, ok.text
    assert len(flash_peer.requests_to("/api/v1/timepoints/generate")) == 1
