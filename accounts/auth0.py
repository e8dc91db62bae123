"""Auth0: the only module that knows Auth0's URLs — signing keys (JWKS), token checks, /userinfo.

Access tokens are RS256 JWTs. Signing keys come from the JWKS through PyJWT's `PyJWKClient`; we add
what it lacks for a multi-threaded server: one fetch in flight at a time (others wait for its
result, never longer than the fetch timeout), and at most one refetch for unknown `kid`s per
cooldown across all threads, so random `kid`s cannot turn the gateway into a JWKS amplifier.

Everything is blocking: callers on an event loop go through `aauthenticate`, which runs it off
the loop.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from django.conf import settings

from timepoint_billing.errors import ServiceUnavailable, Unauthenticated

if TYPE_CHECKING:
    from jwt import PyJWK, PyJWKSet

# PyJWT is imported in the functions that check a token, not here: with its `crypto` extra it
# loads cryptography's native library, ~9 MB in every gateway worker, and this module is loaded
# at startup (accounts registers its caller resolvers) whether or not a JWT ever arrives. A worker
# that serves API keys only never pays for it (issue 17).

logger = logging.getLogger("timepoint.auth0")

ALGORITHM = "RS256"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
VERIFIED_CACHE_MAX_ENTRIES = 10_000


class AuthUnavailable(ServiceUnavailable):
    default_code = "auth_unavailable"
    default_detail = "The sign-in service is temporarily unavailable; retry shortly."


def _rejected(detail: str, code: str) -> Unauthenticated:
    return Unauthenticated(
        detail,
        code=code,
        headers={
            "WWW-Authenticate": f'Bearer realm="api", error="invalid_token", '
            f'error_description="{code}"'
        },
    )


@dataclass(frozen=True)
class KeySetConfig:
    url: str
    timeout: float
    lifespan: float
    cooldown: float

    @classmethod
    def from_settings(cls) -> KeySetConfig:
        return cls(
            url=settings.AUTH0_JWKS_URL,
            timeout=float(settings.AUTH0_JWKS_TIMEOUT),
            lifespan=float(settings.AUTH0_JWKS_CACHE_SECONDS),
            cooldown=float(settings.AUTH0_JWKS_REFETCH_COOLDOWN),
        )


class SigningKeys:
    """Auth0's signing keys, cached for `lifespan` seconds, shared by every thread of a process."""

    def __init__(self, config: KeySetConfig) -> None:
        from jwt import PyJWKClient

        self.config = config
        # PyJWKClient fetches (with the timeout, no redirects) and holds the set for `lifespan`;
        # its own cooldown is off because its lock is held during a fetch, which would queue
        # every request behind a hanging JWKS. Ours is below.
        self.client = PyJWKClient(
            config.url,
            cache_jwk_set=True,
            lifespan=config.lifespan,
            timeout=config.timeout,
            cooldown_duration=0,
        )
        self._fetch_lock = threading.Lock()
        self._fetches = 0  # completed attempts, successful or not
        self._last_attempt = float("-inf")

    def _cached_set(self) -> PyJWKSet | None:
        cache = self.client.jwk_set_cache
        return cache.get() if cache is not None else None

    @staticmethod
    def _match(jwk_set: PyJWKSet | None, kid: str) -> PyJWK | None:
        if jwk_set is None:
            return None
        for key in jwk_set.keys:
            if key.key_id == kid and key.public_key_use in ("sig", None):
                return key
        return None

    def key_for(self, kid: str) -> PyJWK:
        seen = self._fetches
        jwk_set = self._cached_set()
        key = self._match(jwk_set, kid)
        if key is not None:
            return key
        if jwk_set is not None and time.monotonic() - self._last_attempt < self.config.cooldown:
            raise _rejected("The token was signed with an unknown key.", "unknown_key")
        self._fetch_once(seen)
        jwk_set = self._cached_set()
        if jwk_set is None:
            raise AuthUnavailable()
        key = self._match(jwk_set, kid)
        if key is None:
            raise _rejected("The token was signed with an unknown key.", "unknown_key")
        return key

    def _fetch_once(self, seen: int) -> None:
        """Fetch unless another thread finished a fetch since this one looked (`seen`)."""
        import jwt

        if not self._fetch_lock.acquire(timeout=self.config.timeout):
            raise AuthUnavailable()
        try:
            if self._fetches != seen:
                return  # use the result of the fetch we waited for
            try:
                self.client.get_jwk_set(refresh=True)
            except (jwt.PyJWTError, ValueError, OSError) as exc:
                logger.warning("JWKS fetch failed: %s", exc)
            finally:
                self._fetches += 1
                self._last_attempt = time.monotonic()
        finally:
            self._fetch_lock.release()


_keys: SigningKeys | None = None
_keys_lock = threading.Lock()


def signing_keys() -> SigningKeys:
    """The process-wide key set, rebuilt only when its settings change."""
    import jwt

    global _keys
    config = KeySetConfig.from_settings()
    current = _keys
    if current is not None and current.config == config:
        return current
    with _keys_lock:
        if _keys is None or _keys.config != config:
            try:
                _keys = SigningKeys(config)
            except jwt.PyJWKClientError as exc:  # e.g. a JWKS URL that is not http(s)
                logger.error("AUTH0_JWKS_URL is unusable: %s", exc)
                raise AuthUnavailable() from exc
        return _keys


class _VerifiedTokens:
    """Claims of recently verified tokens (by SHA-256 of the token), so the hot path skips the
    signature check. Bounded in size and in time (never past `exp` or the key cache lifetime)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(raw: str) -> tuple[str, str, str]:
        digest = hashlib.sha256(raw.encode()).hexdigest()
        return digest, settings.AUTH0_ISSUER, settings.AUTH0_AUDIENCE

    def get(self, raw: str) -> dict[str, Any] | None:
        entry = self._entries.get(self._key(raw))
        if entry is None or entry[0] <= time.time():
            return None
        return entry[1]

    def put(self, raw: str, claims: dict[str, Any]) -> None:
        until = min(float(claims["exp"]), time.time() + settings.AUTH0_JWKS_CACHE_SECONDS)
        with self._lock:
            if len(self._entries) >= VERIFIED_CACHE_MAX_ENTRIES:
                now = time.time()
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                while len(self._entries) >= VERIFIED_CACHE_MAX_ENTRIES:
                    self._entries.pop(next(iter(self._entries)))
            self._entries[self._key(raw)] = (until, claims)


_verified = _VerifiedTokens()


def verify_access_token(raw: str) -> dict[str, Any]:
    """The claims of a valid Auth0 access token; any other token raises a 401 with a `code`."""
    import jwt

    cached = _verified.get(raw)
    if cached is not None:
        return cached
    if not settings.AUTH0_ISSUER or not settings.AUTH0_JWKS_URL:
        raise _rejected("Auth0 sign-in is not configured on this gateway.", "auth0_not_configured")
    try:
        header = jwt.get_unverified_header(raw)
    except jwt.InvalidTokenError:
        raise _rejected("The bearer token is not a valid JWT.", "malformed_token")
    if header.get("alg") != ALGORITHM:
        raise _rejected("Only RS256-signed tokens are accepted.", "invalid_algorithm")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _rejected("The token has no key id (kid).", "unknown_key")
    key = signing_keys().key_for(kid)
    claims = _decode(raw, key)
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip():
        raise _rejected("The token has an empty subject.", "missing_claim")
    _verified.put(raw, claims)
    return claims


def _decode(raw: str, key: PyJWK) -> dict[str, Any]:
    import jwt

    try:
        return dict(
            jwt.decode(
                raw,
                key.key,
                algorithms=[ALGORITHM],
                audience=settings.AUTH0_AUDIENCE,
                issuer=settings.AUTH0_ISSUER,
                leeway=settings.AUTH0_LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
        )
    except jwt.ExpiredSignatureError:
        raise _rejected("The token has expired.", "token_expired")
    except jwt.ImmatureSignatureError:
        raise _rejected("The token is not valid yet.", "token_not_yet_valid")
    except jwt.InvalidAudienceError:
        raise _rejected("The token is not meant for this API.", "invalid_audience")
    except jwt.InvalidIssuerError:
        raise _rejected("The token was not issued by our Auth0 tenant.", "invalid_issuer")
    except jwt.MissingRequiredClaimError as exc:
        raise _rejected(f"The token lacks the required claim {exc.claim!r}.", "missing_claim")
    except jwt.InvalidSignatureError:
        raise _rejected("The token signature does not verify.", "invalid_signature")
    except jwt.InvalidTokenError:
        raise _rejected("The bearer token is invalid.", "invalid_token")


def userinfo(access_token: str) -> dict[str, Any]:
    """Auth0's profile for a token that lacks email/name; `{}` on any failure (never fatal)."""
    url = settings.AUTH0_USERINFO_URL
    if not url:
        return {}
    try:
        response = httpx.get(
            url,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=settings.AUTH0_JWKS_TIMEOUT,
            follow_redirects=False,
        )
        if response.status_code != 200:
            return {}
        body = response.json()
    except (httpx.HTTPError, ValueError):
        logger.warning("Auth0 /userinfo failed; creating the user without a profile")
        return {}
    return body if isinstance(body, dict) else {}
