"""Browser login for staff and the developer portal through mozilla-django-oidc against Auth0.

Wired in settings: `AUTHENTICATION_BACKENDS` (this backend first, Django's ModelBackend after it so
superusers keep username/password on /admin/), `OIDC_*` endpoints derived from `AUTH0_DOMAIN`, and
`OIDC_TIMEOUT` for every call to Auth0. Routes: `/oidc/authenticate/`, `/oidc/callback/`.
Admin access stays Django's `is_staff`; this backend never grants it.
"""

from __future__ import annotations

from typing import Any

from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from accounts.models import User


class Auth0OIDCBackend(OIDCAuthenticationBackend):
    """Users are matched by Auth0 `sub`, never by email (an email can be re-registered)."""

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        sub = claims.get("sub")
        if not sub:
            return self.UserModel.objects.none()
        # Deleted users match too (and are then refused), so a deleted account is never recreated.
        return self.UserModel.objects.filter(auth0_sub=sub)

    def create_user(self, claims: dict[str, Any]) -> User:
        sub = str(claims["sub"])
        user: User = self.UserModel.objects.create_user(
            username=sub[:150],
            email=claims.get("email", ""),
            first_name=str(claims.get("name", ""))[:150],
            auth0_sub=sub,
        )
        return user

    def update_user(self, user: User, claims: dict[str, Any]) -> User | None:
        # The callback view refuses inactive users; returning None also covers direct callers.
        return user if user.is_active and user.deleted_at is None else None

    def get_user(self, user_id: Any) -> User | None:
        user: User | None = super().get_user(user_id)
        if user is None or not user.is_active or user.deleted_at is not None:
            return None
        return user
