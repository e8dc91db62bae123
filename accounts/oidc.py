"""Browser login for staff and the developer portal through mozilla-django-oidc against Auth0."""

from __future__ import annotations

from typing import Any

from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from accounts.models import User


class Auth0OIDCBackend(OIDCAuthenticationBackend):
    """Users are matched by Auth0 `sub`, never by email (an email can be re-registered)."""

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        sub = claims.get("sub")
        if not sub:
            return self.UserModel.objects.none()
        return self.UserModel.objects.filter(auth0_sub=sub, deleted_at__isnull=True)

    def create_user(self, claims: dict[str, Any]) -> User:
        sub = str(claims["sub"])
        user: User = self.UserModel.objects.create_user(
            username=sub[:150], email=claims.get("email", ""), auth0_sub=sub
        )
        return user
