"""Input validation for the relay's request bodies, and the shapes of its answers.
(Past 400 lines: one shape per upstream answer, the allow-list of what leaves the gateway.)

The output serializers are the allow-list of what leaves the gateway: they are the routes'
OpenAPI responses (`relay/openapi.py`), and each answer is built from their fields alone
(`relay/projection.py` compiles them once into field projections; no serializer runs per
request). A field an upstream adds reaches nobody until it is documented here. Objects declared
as `DictField` are free-form in the contract (a map, the client's echoed `request_context`,
generated content) and pass whole.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from relay.pricing import PRESETS

# Fields of Flash's generation body the gateway accepts (upstreams.md A4). `text_model` and
# `image_model` are refused: Flash prices by preset, so an override could buy Claude Opus at the
# balanced price. `write_blob` writes files on Flash's disk; `callback_url` is for the async route.
GENERATE_FIELDS = frozenset(
    {
        "query",
        "generate_image",
        "preset",
        "model_policy",
        "llm_params",
        "visibility",
        "request_context",
        "entity_ids",
    }
)


class LlmParamsSerializer(serializers.Serializer):
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=32768)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    top_k = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    frequency_penalty = serializers.FloatField(required=False, min_value=-2, max_value=2)
    presence_penalty = serializers.FloatField(required=False, min_value=-2, max_value=2)
    repetition_penalty = serializers.FloatField(required=False, min_value=0, max_value=2)
    stop = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=4
    )
    thinking_level = serializers.CharField(required=False, max_length=32)
    system_prompt_prefix = serializers.CharField(required=False, max_length=2000)
    system_prompt_suffix = serializers.CharField(required=False, max_length=2000)

    def to_internal_value(self, data: Any) -> Any:
        # As a nested field this serializer has no `initial_data` (reading it was a 500 for any
        # llm_params object): unknown keys are checked on the incoming data itself.
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                names = ", ".join(sorted(repr(name)[:40] for name in unknown)[:5])
                raise serializers.ValidationError(f"Unknown llm_params: {names}.")
        return super().to_internal_value(data)


class GenerateInputSerializer(serializers.Serializer):
    """The body of `POST /generate` and `POST /generate/stream` (a subset of Flash's)."""

    query = serializers.CharField(min_length=3, max_length=500, trim_whitespace=False)
    generate_image = serializers.BooleanField(required=False, default=False)
    preset = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=32,
        help_text="balanced (default), hyper, gemini3, free_distillable; hd and frontier need a "
        "plan with HD access. Case-insensitive.",
    )
    model_policy = serializers.ChoiceField(choices=["permissive"], required=False, allow_null=True)
    llm_params = LlmParamsSerializer(required=False, allow_null=True)
    visibility = serializers.ChoiceField(
        choices=["public", "private"],
        required=False,
        allow_null=True,
        help_text="Exactly `public` (default) or `private`.",
    )
    request_context = serializers.DictField(required=False, allow_null=True)
    entity_ids = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, allow_null=True, max_length=50
    )

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = set(data) - GENERATE_FIELDS
            if unknown:
                raise serializers.ValidationError(
                    {sorted(unknown)[0]: ["This field is not accepted by the gateway."]}
                )
            data = dict(data)
            if isinstance(data.get("model_policy"), str):
                data["model_policy"] = data["model_policy"].lower()
        return super().to_internal_value(data)

    def validate_preset(self, value: str | None) -> str:
        preset = (value or "balanced").strip().lower()
        if preset not in PRESETS:
            raise serializers.ValidationError(
                f"Unknown preset; use one of {', '.join(sorted(PRESETS))}."
            )
        return preset

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs.setdefault("preset", "balanced")
        if attrs.get("preset") is None:
            attrs["preset"] = "balanced"
        return attrs


class VisibilityInputSerializer(serializers.Serializer):
    visibility = serializers.ChoiceField(choices=["public", "private"])


# --- Response shapes (what leaves the gateway)


def _test_mode() -> serializers.BooleanField:
    return serializers.BooleanField(
        required=False, help_text="Present (true) only on a `tp_test_` key's simulated answer."
    )


class BalanceSerializer(serializers.Serializer):
    balance = serializers.IntegerField()
    lifetime_earned = serializers.IntegerField()
    lifetime_spent = serializers.IntegerField()


class HistoryItemSerializer(serializers.Serializer):
    amount = serializers.IntegerField(help_text="Negative for a charge.")
    balance_after = serializers.IntegerField()
    type = serializers.CharField()
    description = serializers.CharField(allow_null=True)
    created_at = serializers.CharField()


class CostsSerializer(serializers.Serializer):
    costs = serializers.DictField(child=serializers.IntegerField())


_FULL = "Only with `full=true`; null until the generation has completed."


class TimepointMetadataSerializer(serializers.Serializer):
    graph = serializers.DictField(allow_null=True, required=False)
    camera = serializers.DictField(allow_null=True, required=False)
    image_prompt_data = serializers.DictField(allow_null=True, required=False)


class TimepointSerializer(serializers.Serializer):
    id = serializers.CharField()
    query = serializers.CharField()
    slug = serializers.CharField()
    status = serializers.CharField(help_text="pending, processing, completed or failed")
    year = serializers.IntegerField(allow_null=True)
    month = serializers.IntegerField(allow_null=True)
    day = serializers.IntegerField(allow_null=True)
    season = serializers.CharField(allow_null=True)
    time_of_day = serializers.CharField(allow_null=True)
    era = serializers.CharField(allow_null=True)
    location = serializers.CharField(allow_null=True)
    has_image = serializers.BooleanField()
    image_url = serializers.CharField(
        allow_null=True, help_text="The whole image as a `data:image/...;base64,` URI."
    )
    text_model_used = serializers.CharField(allow_null=True)
    image_model_used = serializers.CharField(allow_null=True)
    model_provider = serializers.CharField(allow_null=True)
    model_permissiveness = serializers.CharField(allow_null=True)
    created_at = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    is_deleted = serializers.BooleanField()
    sequence_id = serializers.CharField(allow_null=True)
    render_type = serializers.CharField()
    generation_version = serializers.IntegerField()
    tags = serializers.ListField(child=serializers.CharField(), allow_null=True)
    visibility = serializers.ChoiceField(choices=["public", "private"])
    share_url = serializers.CharField(allow_null=True)
    preset_used = serializers.CharField()
    generation_time_ms = serializers.IntegerField(allow_null=True)
    request_context = serializers.DictField(allow_null=True)
    test_mode = _test_mode()
    # Flash adds these to a read with `full=true` (and `image_base64` with `include_image=true`);
    # they are null until the generation has completed.
    image_prompt = serializers.CharField(required=False, allow_null=True, help_text=_FULL)
    image_base64 = serializers.CharField(
        required=False, allow_null=True, help_text="Only with `include_image=true`."
    )
    metadata = TimepointMetadataSerializer(required=False, allow_null=True, help_text=_FULL)
    characters = serializers.DictField(required=False, allow_null=True, help_text=_FULL)
    scene = serializers.DictField(required=False, allow_null=True, help_text=_FULL)
    dialog = serializers.ListField(
        child=serializers.DictField(), required=False, allow_null=True, help_text=_FULL
    )
    grounding = serializers.DictField(required=False, allow_null=True, help_text=_FULL)
    moment = serializers.DictField(required=False, allow_null=True, help_text=_FULL)


# --- A person's own timepoints (issue 23)


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
    test_mode = _test_mode()


# --- The stream's events (`POST /generate/stream`)


class StartDataSerializer(serializers.Serializer):
    query = serializers.CharField()
    generate_image = serializers.BooleanField()
    preset = serializers.CharField()
    test_mode = _test_mode()


class StepDataSerializer(serializers.Serializer):
    latency_ms = serializers.IntegerField()
    model_used = serializers.CharField(allow_null=True)


@extend_schema_field({"type": "object", "nullable": True, "additionalProperties": False})
class AlwaysNullField(serializers.Field):  # type: ignore[type-arg]
    """A key whose value is null, whatever the upstream put there (`relay.projection`)."""

    def to_representation(self, value: Any) -> None:
        return None


class DoneDataSerializer(serializers.Serializer):
    timepoint_id = serializers.CharField(
        allow_null=True, help_text="null only on a test key's simulated answer"
    )
    slug = serializers.CharField()
    status = serializers.CharField(help_text="completed or failed (refunded)")
    year = serializers.IntegerField(allow_null=True)
    location = serializers.CharField(allow_null=True)
    total_latency_ms = serializers.IntegerField()
    has_image = serializers.BooleanField()
    saved = serializers.BooleanField()
    test_mode = _test_mode()


class ErrorDataSerializer(serializers.Serializer):
    timepoint_id = serializers.CharField(
        required=False, help_text="Flash could not save the timepoint (`status: save_failed`)."
    )
    status = serializers.CharField(required=False)
    total_latency_ms = serializers.IntegerField(required=False)
    saved = serializers.BooleanField(required=False)
    code = serializers.CharField(
        required=False,
        help_text="`upstream_outcome_unknown`: the stream was cut before its final event; the "
        "gateway finds out from Flash what became of the generation and refunds it if it failed.",
    )
    request_id = serializers.CharField(required=False, help_text="With `code`: quote it.")


# What every event holds; each event name adds its own `data` below. (`data` is also the name of
# a Serializer property, hence the type ignores: DRF's metaclass takes declared fields off the
# class, so the property is untouched.)
class StreamEventSerializer(serializers.Serializer):
    event = serializers.CharField()
    step = serializers.CharField(allow_null=True)
    progress = serializers.IntegerField(help_text="0-100")
    error = serializers.CharField(allow_null=True)


class StartEventSerializer(StreamEventSerializer):
    data = StartDataSerializer()  # type: ignore[assignment]


class StepCompleteEventSerializer(StreamEventSerializer):
    data = StepDataSerializer()  # type: ignore[assignment]


class StepErrorEventSerializer(StreamEventSerializer):
    data = AlwaysNullField(help_text="Always null in this event.")  # type: ignore[assignment]


class DoneEventSerializer(StreamEventSerializer):
    data = DoneDataSerializer()  # type: ignore[assignment]


class ErrorEventSerializer(StreamEventSerializer):
    data = ErrorDataSerializer(allow_null=True)  # type: ignore[assignment]


# Each event of the stream, by its `event` name; events of other names are not passed on.
STREAM_EVENTS: dict[str, serializers.Serializer[Any] | type[serializers.Serializer[Any]]] = {
    "start": StartEventSerializer,
    "step_complete": StepCompleteEventSerializer,
    "step_error": StepErrorEventSerializer,
    "done": DoneEventSerializer,
    "error": ErrorEventSerializer,
}


# --- Clockchain


class MomentItemSerializer(serializers.Serializer):
    path = serializers.CharField()
    name = serializers.CharField()
    one_liner = serializers.CharField()
    year = serializers.IntegerField(allow_null=True)
    month = serializers.CharField(help_text="Lower-case month name or an empty string.")
    day = serializers.IntegerField()
    country = serializers.CharField()
    region = serializers.CharField()
    city = serializers.CharField()
    source_type = serializers.CharField()
    confidence = serializers.FloatField(allow_null=True)
    status = serializers.CharField()
    image_url = serializers.CharField(allow_null=True)
    schema_version = serializers.CharField()
    text_model = serializers.CharField()
    image_model = serializers.CharField()


class MomentListSerializer(serializers.Serializer):
    items = MomentItemSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class EdgeSerializer(serializers.Serializer):
    source = serializers.CharField()  # type: ignore[assignment]
    target = serializers.CharField()
    edge_type = serializers.CharField()
    weight = serializers.FloatField()
    theme = serializers.CharField()


class MomentSerializer(serializers.Serializer):
    path = serializers.CharField()
    type = serializers.CharField()
    name = serializers.CharField()
    year = serializers.IntegerField(allow_null=True)
    month = serializers.IntegerField(help_text="1-12, 0 if unknown.")
    month_num = serializers.IntegerField()
    day = serializers.IntegerField()
    time = serializers.CharField()
    country = serializers.CharField()
    region = serializers.CharField()
    city = serializers.CharField()
    slug = serializers.CharField()
    layer = serializers.IntegerField()
    visibility = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    one_liner = serializers.CharField()
    figures = serializers.ListField(child=serializers.CharField())
    flash_timepoint_id = serializers.CharField(allow_null=True)
    flash_slug = serializers.CharField()
    flash_share_url = serializers.CharField()
    era = serializers.CharField()
    image_url = serializers.CharField(allow_null=True)
    created_at = serializers.CharField()
    published_at = serializers.CharField()
    source_type = serializers.CharField()
    confidence = serializers.FloatField(allow_null=True)
    status = serializers.CharField()
    edges = EdgeSerializer(many=True, help_text="Only edges to public moments.")


class BrowseItemSerializer(serializers.Serializer):
    segment = serializers.CharField()
    count = serializers.IntegerField()
    label = serializers.CharField()  # type: ignore[assignment]


class BrowseSerializer(serializers.Serializer):
    prefix = serializers.CharField()
    items = BrowseItemSerializer(many=True)


class SummarySerializer(serializers.Serializer):
    path = serializers.CharField()
    name = serializers.CharField()
    one_liner = serializers.CharField()
    year = serializers.IntegerField()
    month = serializers.IntegerField()
    day = serializers.IntegerField()
    layer = serializers.IntegerField()
    visibility = serializers.CharField()
    source_type = serializers.CharField()
    image_url = serializers.CharField(allow_null=True)


class TodaySerializer(serializers.Serializer):
    month = serializers.IntegerField()
    day = serializers.IntegerField()
    events = SummarySerializer(many=True)


class SearchItemSerializer(serializers.Serializer):
    path = serializers.CharField()
    name = serializers.CharField()
    one_liner = serializers.CharField()
    score = serializers.FloatField()
    image_url = serializers.CharField(allow_null=True)


class NeighborSerializer(serializers.Serializer):
    path = serializers.CharField()
    name = serializers.CharField()
    edge_type = serializers.CharField()
    weight = serializers.FloatField()
    theme = serializers.CharField()
    description = serializers.CharField()


class DateRangeSerializer(serializers.Serializer):
    min_year = serializers.IntegerField(allow_null=True)
    max_year = serializers.IntegerField(allow_null=True)


class StatsSerializer(serializers.Serializer):
    total_nodes = serializers.IntegerField(help_text="Public moments only.")
    date_range = DateRangeSerializer()


class ReconcileSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    flash_user_id = serializers.CharField()
    metered_credits = serializers.IntegerField()
    metered_generations = serializers.IntegerField()
    flash_charged = serializers.IntegerField()
    flash_refunded = serializers.IntegerField()
    flash_net_spent = serializers.IntegerField()
    difference = serializers.IntegerField(
        allow_null=True, help_text="null until the whole ledger was read (`complete`)"
    )
    flash_balance = serializers.IntegerField(allow_null=True)
    complete = serializers.BooleanField(help_text="the whole ledger was read")
    ledger_rows_read = serializers.IntegerField()
    next_cursor = serializers.CharField(
        allow_null=True, help_text="pass back as `?cursor=` to resume an unfinished reconcile"
    )
