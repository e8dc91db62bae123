"""The projections answers are built with (relay/projection.py): compiled from the serializers
that document the answers, keeping only their keys at every level."""

from __future__ import annotations

from typing import Any

import pytest

from relay import serializers as s
from relay.openapi import GENERATION_EVENT
from relay.projection import projection


def test_only_documented_keys_are_kept_at_every_level() -> None:
    moment = projection(s.MomentSerializer)
    edge = {"source": "/a", "target": "/b", "edge_type": "causes", "weight": 1.0, "theme": ""}
    answer = moment(
        {
            "path": "/a",
            "tags": ["rome"],
            "created_by": "user-1",
            "edges": [{**edge, "created_by": "user-1"}, "not an edge", None],
        }
    )
    # Missing documented keys stay missing; lists of strings pass; non-objects in a list of
    # objects are dropped.
    assert answer == {"path": "/a", "tags": ["rome"], "edges": [edge]}


def test_many_and_nullable_objects() -> None:
    history = projection(s.HistoryItemSerializer(many=True))
    assert history([{"amount": -5, "ledger_id": 7}]) == [{"amount": -5}]
    assert history({"amount": -5}) is None  # not the documented list: nothing of it passes
    timepoint = projection(s.TimepointSerializer)
    assert timepoint({"id": "t", "metadata": None}) == {"id": "t", "metadata": None}
    full = timepoint({"id": "t", "metadata": {"graph": {"any": 1}, "owner": "x"}})
    assert full == {"id": "t", "metadata": {"graph": {"any": 1}}}
    # Documented as an object, something else came: null, so nothing rides along inside it.
    assert timepoint({"id": "t", "metadata": [{"owner": "x"}]}) == {"id": "t", "metadata": None}


def test_free_form_values_pass_whole() -> None:
    costs = projection(s.CostsSerializer)
    assert costs({"costs": {"generate_hd": 10, "new_operation": 3}, "x": 1}) == {
        "costs": {"generate_hd": 10, "new_operation": 3}
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"event": "done", "step": "complete", "progress": 100, "error": None, "x": 1,
             "data": {"timepoint_id": "t", "status": "completed", "saved": True, "owner": "u"}},
            {"event": "done", "step": "complete", "progress": 100, "error": None,
             "data": {"timepoint_id": "t", "status": "completed", "saved": True}},
        ),
        (
            {"event": "step_error", "step": "judge", "progress": 10, "error": "no",
             "data": {"trace": "secret"}},
            {"event": "step_error", "step": "judge", "progress": 10, "error": "no", "data": None},
        ),
        ({"event": "step_started", "step": "judge", "progress": 5}, None),
        ("not an event", None),
        (None, None),
    ],
)  # fmt: skip
def test_stream_events_by_name(event: Any, expected: Any) -> None:
    """Each event keeps the fields documented for its name; an event of another name is not
    passed on at all."""
    assert projection(GENERATION_EVENT)(event) == expected


def test_a_shape_without_fields_to_choose_is_refused() -> None:
    with pytest.raises(TypeError):
        projection(s.CostsSerializer().fields["costs"])
