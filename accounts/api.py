"""Identity endpoints: login, profile, logout, account deletion and data export.

Each is rate limited and metered like the other authenticated views (`LimitedMeteredApiView`):
one usage record per call, the caller's limit headers on the response."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import selectors, services
from accounts.scopes import Scope
from accounts.serializers import (
    ExportOutputSerializer,
    LoginOutputSerializer,
    LogoutInputSerializer,
    LogoutOutputSerializer,
    MeOutputSerializer,
    UserSerializer,
)
from apikeys.drf import LimitedMeteredApiView
from timepoint_billing.callers import Caller
from timepoint_billing.errors import Forbidden, Unauthenticated
from timepoint_billing.openapi import error_responses

AUTH_ERRORS = (401, 429, 503)


def _caller(request: Request) -> Caller:
    caller = request.auth
    assert isinstance(caller, Caller)  # IsAuthenticated ran; GatewayAuthentication sets it
    return caller


def _interactive(request: Request) -> Caller:
    """Account-level actions need the person (Auth0 token or session), never an API key."""
    caller = _caller(request)
    if caller.kind == "api_key":
        raise Forbidden(
            "Sign in with your account for this action; API keys cannot do it.",
            code="interactive_login_required",
        )
    return caller


class AuthLoginApi(LimitedMeteredApiView):
    required_scope = None  # Auth0 tokens only

    @extend_schema(
        tags=["auth"],
        summary="Exchange an Auth0 access token for a gateway session",
        description="Send the Auth0 JWT as `Authorization: Bearer`. Creates the account (and its "
        "Flash user) on first login.",
        request=None,
        responses={200: LoginOutputSerializer, **error_responses(*AUTH_ERRORS)},
    )
    def post(self, request: Request) -> Response:
        caller = _caller(request)
        if caller.kind != "jwt":
            raise Unauthenticated("Log in with an Auth0 access token.", code="auth0_token_required")
        session, raw = services.session_create(user=caller.user)
        output = {"session_token": raw, "expires_at": session.expires_at, "user": caller.user}
        return Response(LoginOutputSerializer(output).data)


class AuthMeApi(LimitedMeteredApiView):
    required_scope = {"GET": Scope.READ, "DELETE": None}  # DELETE: the person only

    @extend_schema(
        tags=["auth"],
        summary="The caller's profile and credit balance",
        description="`balance` is null and `balance_available` false when Flash does not answer "
        "quickly; the call still succeeds.",
        responses={200: MeOutputSerializer, **error_responses(*AUTH_ERRORS)},
    )
    def get(self, request: Request) -> Response:
        user = _caller(request).user
        balance = services.balance_lookup(user=user)
        # MeOutputSerializer's shape (it documents this answer): the user, then Flash's
        # balance (typed at the client boundary), not attributes stuck onto the user object.
        return Response(
            {
                **UserSerializer(user).data,
                "balance": balance["balance"] if balance is not None else None,
                "balance_available": balance is not None,
            }
        )

    @extend_schema(
        tags=["auth"],
        summary="Delete the account",
        description="Revokes every session and API key and cancels an active subscription. "
        "Usage and payment records are kept (billing records) with an anonymised user. Signing "
        "in again with the same login creates a new, empty account. **Your timepoints are not "
        "deleted with the account**: list them with `GET /api/v1/timepoints/mine` and delete "
        "each with `DELETE /api/v1/timepoints/{id}?permanent=true` first. What is left keeps its "
        "visibility: private timepoints stay private (nobody can sign in as their owner again); "
        "public ones stay public, without any name attached.",
        responses={204: None, **error_responses(401, 403, 429, 503)},
    )
    def delete(self, request: Request) -> Response:
        services.account_delete(user=_interactive(request).user)
        return Response(status=204)


class AuthLogoutApi(LimitedMeteredApiView):
    required_scope = Scope.KEYS

    @extend_schema(
        tags=["auth"],
        summary="Revoke the presented session, or all sessions with ?all=true",
        parameters=[LogoutInputSerializer],
        request=None,
        responses={200: LogoutOutputSerializer, **error_responses(400, *AUTH_ERRORS)},
    )
    def post(self, request: Request) -> Response:
        caller = _caller(request)
        params = LogoutInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        if params.validated_data["all"]:
            revoked = services.sessions_revoke(user=caller.user)
        elif caller.session is not None:
            revoked = services.sessions_revoke(user=caller.user, session=caller.session)
        else:
            revoked = 0  # an Auth0 token or API key has no gateway session to end
        return Response(LogoutOutputSerializer({"revoked": revoked}).data)


class UserExportApi(LimitedMeteredApiView):
    required_scope = None  # the person only

    @extend_schema(
        tags=["auth"],
        summary="Everything stored about the caller, as JSON",
        description="Profile and sessions (prefixes and dates), plus one top-level section per "
        "app that stores user data: API keys; usage (every record, uncapped, and the daily and "
        "monthly roll-ups); payments, credit grants, the Stripe customer with its subscriptions "
        "and invoices, and App Store transactions.",
        responses={200: ExportOutputSerializer, **error_responses(401, 403, 429, 503)},
    )
    def get(self, request: Request) -> Response:
        return Response(selectors.user_export(user=_interactive(request).user))
