"""Response shapes of the routes for a person's own timepoints (issue 23), for OpenAPI. The
answers are built field by field from these names in `relay/timepoints.py`."""

from __future__ import annotations

from rest_framework import serializers


class MineItemSerializer(serializers.Serializer):
    id = serializers.CharField()
    query = serializers.CharField()
    slug = serializers.CharField()
    status = serializers.CharField(help_text="pending, processing, completed or failed")
    year = serializers.IntegerField(allow_null=True)
    location = serializers.CharField(allow_null=True)
    has_image = serializers.BooleanField()
    created_at = serializers.CharField(allow_null=True)


class MineListSerializer(serializers.Serializer):
    items = MineItemSerializer(many=True)
    total = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()


class CharacterSerializer(serializers.Serializer):
    name = serializers.CharField()
    role = serializers.CharField()
    system_prompt = serializers.CharField()
    dialog_context = serializers.CharField()
    speaks_in_scene = serializers.BooleanField()
    personality = serializers.CharField(allow_null=True)
    speaking_style = serializers.CharField(allow_null=True)
    emotional_state = serializers.CharField(allow_null=True)
    historical_note = serializers.CharField(allow_null=True)


class CharactersSerializer(serializers.Serializer):
    timepoint_id = serializers.CharField()
    query = serializers.CharField()
    year = serializers.IntegerField(allow_null=True)
    location = serializers.CharField(allow_null=True)
    era = serializers.CharField(allow_null=True)
    total_characters = serializers.IntegerField()
    speaking_characters = serializers.IntegerField()
    characters = CharacterSerializer(many=True)


class DeleteOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    deleted = serializers.BooleanField()
    permanent = serializers.BooleanField()


class AsyncGenerateOutputSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The timepoint's id: poll GET /timepoints/{id}.")
    status = serializers.CharField(help_text="`processing` (or `completed` for a test key).")
    poll_url = serializers.CharField()
    request_context = serializers.DictField(allow_null=True)
    test_mode = serializers.BooleanField(
        required=False, help_text="Present (true) only on a `tp_test_` key's simulated answer."
    )
