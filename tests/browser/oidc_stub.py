"""A local OpenID Connect provider on loopback, standing in for Auth0 in tests.

It speaks just enough of the protocol for mozilla-django-oidc's authorization-code flow:

- `GET  /authorize`               → 302 straight back to `redirect_uri` with a code and the state
                                     (the person is "already signed in" as `claims`)
- `POST /oauth/token`             → `{"access_token", "id_token", ...}`, both RS256 JWTs; the
                                     id_token carries the nonce from /authorize
- `GET  /userinfo`                → the claims (bearer access token required)
- `GET  /.well-known/jwks.json`   → the public signing key

The access token is shaped like an Auth0 API token (iss, aud, sub, exp), so the gateway's own
Auth0 verifier accepts it when `AUTH0_*` settings point here. Test infrastructure, never imported by
product code.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class OIDCProviderStub:
    def __init__(
        self,
        *,
        claims: dict[str, Any],
        client_id: str = "portal-test-client",
        client_secret: str = "portal-test-secret",
        audience: str = "https://api.timepointai.com",
    ) -> None:
        self.claims = dict(claims)
        self.client_id = client_id
        self.client_secret = client_secret
        self.audience = audience
        self.kid = "stub-" + secrets.token_hex(4)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._codes: dict[str, dict[str, str]] = {}  # code -> {"nonce", "redirect_uri"}
        self._access_tokens: set[str] = set()
        self.token_requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- lifecycle

    def start(self) -> OIDCProviderStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def issuer(self) -> str:
        return self.url + "/"

    def settings(self) -> dict[str, Any]:
        """The gateway settings that point browser login (and Auth0 token checks) here."""
        return {
            "OIDC_RP_CLIENT_ID": self.client_id,
            "OIDC_RP_CLIENT_SECRET": self.client_secret,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": self.url + "/authorize",
            "OIDC_OP_TOKEN_ENDPOINT": self.url + "/oauth/token",
            "OIDC_OP_USER_ENDPOINT": self.url + "/userinfo",
            "OIDC_OP_JWKS_ENDPOINT": self.url + "/.well-known/jwks.json",
            "AUTH0_CLIENT_ID": self.client_id,
            "AUTH0_CLIENT_SECRET": self.client_secret,
            "AUTH0_DOMAIN": f"127.0.0.1:{self._server.server_address[1]}",
            "AUTH0_ISSUER": self.issuer,
            "AUTH0_AUDIENCE": self.audience,
            "AUTH0_JWKS_URL": self.url + "/.well-known/jwks.json",
            "AUTH0_USERINFO_URL": self.url + "/userinfo",
        }

    # --- tokens

    def jwks(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [public]}

    def _sign(self, payload: dict[str, Any]) -> str:
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})

    def issue(self, code: str) -> dict[str, Any] | None:
        grant = self._codes.pop(code, None)  # a code works once
        if grant is None:
            return None
        now = int(time.time())
        base = {"iss": self.issuer, "sub": self.claims["sub"], "iat": now, "exp": now + 3600}
        id_token = self._sign(
            {**self.claims, **base, "aud": self.client_id, "nonce": grant["nonce"]}
        )
        access_token = self._sign(
            {**base, "aud": [self.audience, self.url + "/userinfo"], "scope": "openid email"}
        )
        self._access_tokens.add(access_token)
        return {
            "access_token": access_token,
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": 3600,
        }

    # --- HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows failures, not every request

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parsed = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                if parsed.path == "/authorize":
                    if query.get("client_id") != stub.client_id or "redirect_uri" not in query:
                        self._json(400, {"error": "invalid_request"})
                        return
                    code = secrets.token_urlsafe(16)
                    stub._codes[code] = {
                        "nonce": query.get("nonce", ""),
                        "redirect_uri": query["redirect_uri"],
                    }
                    target = (
                        query["redirect_uri"]
                        + "?"
                        + urlencode({"code": code, "state": query.get("state", "")})
                    )
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif parsed.path == "/.well-known/jwks.json":
                    self._json(200, stub.jwks())
                elif parsed.path == "/userinfo":
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                    if token not in stub._access_tokens:
                        self._json(401, {"error": "invalid_token"})
                        return
                    self._json(200, stub.claims)
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if urlparse(self.path).path != "/oauth/token":
                    self._json(404, {"error": "not_found"})
                    return
                stub.token_requests += 1
                if (
                    form.get("client_id") != stub.client_id
                    or form.get("client_secret") != stub.client_secret
                ):
                    self._json(401, {"error": "invalid_client"})
                    return
                tokens = stub.issue(form.get("code", ""))
                if tokens is None:
                    self._json(400, {"error": "invalid_grant"})
                    return
                self._json(200, tokens)

        return Handler
