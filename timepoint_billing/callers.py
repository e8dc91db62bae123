"""Who is calling, as every view sees it: the `Caller`, the credential forms and their prefixes,
and which app resolves each form. Below every app: `accounts` (sessions, Auth0 JWTs) and
`apikeys` (developer keys) both build Callers and register their resolver here when they start
(their `AppConfig.ready`), so neither imports the other to authenticate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from timepoint_billing.errors import ScopeRequired, Unauthenticated

if TYPE_CHECKING:  # the models' apps import this module; types only, never at run time
    from accounts.models import GatewaySession, User
    from apikeys.models import APIKey

CallerKind = Literal["jwt", "session", "api_key"]
API_KEY_PREFIXES = ("tp_live_", "tp_test_")
SESSION_PREFIX = "tps_"


@dataclass(frozen=True)
class Caller:
    """What every view sees about the caller: the user, and the key or session used."""

    user: User
    kind: CallerKind
    tier: str
    api_key: APIKey | None = None
    session: GatewaySession | None = None

    @property
    def is_test_mode(self) -> bool:
        """A `tp_test_` key authenticates, is limited and metered, and never spends real credits."""
        return self.api_key is not None and self.api_key.mode == "test"

    def require_scope(self, scope: str | None) -> None:
        """403 `scope_required` naming `scope` unless the caller has it (None: no scope needed).
        The person (session, Auth0 token) has every scope; an API key has its own."""
        if scope is not None and self.api_key is not None and not self.api_key.has_scope(scope):
            raise ScopeRequired(scope)

    @property
    def label(self) -> str:
        """Safe for logs: a key or session prefix, never the secret."""
        if self.api_key is not None:
            return f"key:{self.api_key.prefix}"
        return f"user:{self.user.pk}"


def credential_kind(token: str) -> CallerKind:
    """The form of a bearer token: an API key or a gateway session by prefix, else a JWT."""
    if token.startswith(API_KEY_PREFIXES):
        return "api_key"
    if token.startswith(SESSION_PREFIX):
        return "session"
    return "jwt"


# --- Resolvers: one per credential form, registered by the app that owns the form

Resolve = Callable[[str], Caller]
ResolveCached = Callable[[str], "Caller | None"]
_resolvers: dict[CallerKind, Resolve] = {}
_cached_resolvers: dict[CallerKind, ResolveCached] = {}


def resolver_register(
    kind: CallerKind, resolve: Resolve, *, cached: ResolveCached | None = None
) -> None:
    """Called from an `AppConfig.ready`. `resolve` turns a raw credential into a Caller or raises
    Unauthenticated (sync: it may touch the database); `cached`, when the form has one, answers
    without I/O (None: the full `resolve` is needed)."""
    _resolvers[kind] = resolve
    if cached is not None:
        _cached_resolvers[kind] = cached


def resolve(kind: CallerKind, raw: str) -> Caller:
    resolver = _resolvers.get(kind)
    if resolver is None:  # an app that owns this form is not installed
        raise Unauthenticated()
    return resolver(raw)


def resolve_cached(kind: CallerKind, raw: str) -> Caller | None:
    resolver = _cached_resolvers.get(kind)
    return resolver(raw) if resolver is not None else None
