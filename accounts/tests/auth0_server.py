"""A fake Auth0 tenant on loopback: JWKS, /userinfo and /oauth/token, plus a token signer.

Tests create RSA keys, publish them here and sign real RS256 tokens with PyJWT; the gateway reaches
this server over HTTP exactly as it would reach Auth0. Knobs: `hang` (seconds a JWKS request
stalls), `userinfo` (the profile returned, or None for a 500), `jwks_requests` (a count).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE = "https://api.test.timepointai.com"


@cache
def _private_key(slot: int) -> rsa.RSAPrivateKey:
    # RSA generation is slow on a busy machine: a handful of keys serve the whole run.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class SigningKey:
    """An RSA key pair; `slot` picks one of the shared private keys (distinct slots differ)."""

    def __init__(self, kid: str | None = None, *, slot: int = 0) -> None:
        self.kid = kid or uuid.uuid4().hex[:12]
        self.private = _private_key(slot)

    def jwk(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return dict(jwk)


class FakeAuth0:
    def __init__(self) -> None:
        self.keys: list[SigningKey] = []
        self.hang = 0.0
        self.jwks_requests = 0
        self.userinfo: dict[str, Any] | None = {}
        self.userinfo_requests: list[str] = []
        self.token_response: dict[str, Any] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/jwks.json"):
                    with fake._lock:
                        fake.jwks_requests += 1
                    if fake.hang:
                        time.sleep(fake.hang)
                    self._send(200, {"keys": [key.jwk() for key in fake.keys]})
                elif self.path.endswith("/userinfo"):
                    fake.userinfo_requests.append(self.headers.get("Authorization", ""))
                    if fake.userinfo is None:
                        self._send(500, {"error": "boom"})
                    else:
                        self._send(200, fake.userinfo)
                else:
                    self._send(404, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._send(200, fake.token_response)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        # A fresh path per tenant: the gateway's key cache is keyed by URL, so tests never share it.
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{uuid.uuid4().hex[:8]}"
        self.issuer = f"{self.url}/"
        self.jwks_url = f"{self.url}/.well-known/jwks.json"

    def stop(self) -> None:
        self.hang = 0
        self.server.shutdown()
        self.server.server_close()

    def add_key(self, kid: str | None = None) -> SigningKey:
        key = SigningKey(kid, slot=len(self.keys))
        self.keys.append(key)
        return key

    def claims(self, sub: str = "auth0|alice", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": [AUDIENCE, f"{self.url}/userinfo"],
            "sub": sub,
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,  # every token is distinct, so no cache hides a rejection
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        sub: str = "auth0|alice",
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = key or self.keys[0]
        return jwt.encode(
            self.claims(sub, **claims),
            key.private,
            algorithm="RS256",
            headers={"kid": key.kid, **(headers or {})},
        )
