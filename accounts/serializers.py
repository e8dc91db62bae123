"""Input/output shapes of the identity endpoints."""

from __future__ import annotations

from rest_framework import serializers

from accounts.models import GatewaySession, User


class UserSerializer(serializers.ModelSerializer):
    name = serializers.SerializerMethodField()
    has_hd_access = serializers.BooleanField(read_only=True)

    class Meta:
        model = User
        fields = ["id", "email", "name", "plan", "tier", "flash_user_id", "has_hd_access"]
        read_only_fields = fields

    def get_name(self, user: User) -> str:
        return user.get_full_name()


class LoginOutputSerializer(serializers.Serializer):
    session_token = serializers.CharField(help_text="`tps_…`; shown once. Send as Bearer.")
    expires_at = serializers.DateTimeField()
    user = UserSerializer()


class MeOutputSerializer(UserSerializer):
    balance = serializers.IntegerField(allow_null=True, help_text="Credits; null if Flash is down.")
    balance_available = serializers.BooleanField()

    class Meta(UserSerializer.Meta):
        fields = [*UserSerializer.Meta.fields, "balance", "balance_available"]
        read_only_fields = fields


class LogoutInputSerializer(serializers.Serializer):
    all = serializers.BooleanField(
        required=False, default=False, help_text="Revoke every session of the user."
    )


class LogoutOutputSerializer(serializers.Serializer):
    revoked = serializers.IntegerField(help_text="How many sessions this call revoked.")


class ExportSessionSerializer(serializers.ModelSerializer):
    class Meta:
        model = GatewaySession
        fields = ["prefix", "created_at", "expires_at", "revoked_at"]


class ExportProfileSerializer(serializers.ModelSerializer):
    # Output only: the username is the Auth0 subject (`auth0|…`), which Django's username
    # validator (and so the documented pattern) would refuse.
    username = serializers.CharField(read_only=True)

    class Meta:
        model = User
        fields = [
            "id",
            "username",
            "email",
            "first_name",
            "last_name",
            "auth0_sub",
            "flash_user_id",
            "plan",
            "tier",
            "date_joined",
            "last_login",
            "deleted_at",
        ]


class ExportOutputSerializer(serializers.Serializer):
    """The documented core of the export; other apps add top-level sections (keys, usage, …)."""

    exported_at = serializers.DateTimeField()
    profile = ExportProfileSerializer()
    sessions = ExportSessionSerializer(many=True)
