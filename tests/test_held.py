"""wire.held: a record a node keeps is referred to, not sent again; a reference it cannot honour is refused."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict

from wire.held import HELD, held_ids, refer, restore
from wire.messages import WireError


def content(weights: str) -> RecordDict:
    return RecordDict({"probe": ConfigRecord({"x": 1}), "student_weights": ConfigRecord({"w": weights})})


def test_a_kept_record_travels_once_and_is_put_back() -> None:
    state, first = RecordDict(), content("big")
    restore(first, state, ["student_weights"], "coordinator")
    holds = held_ids(first, ["student_weights", "ensemble"])
    assert list(holds) == ["student_weights"]
    second = refer(content("big"), holds)
    assert "student_weights" not in second and list(second[HELD]["names"]) == ["student_weights"]
    restore(second, state, ["student_weights"], "coordinator")
    assert HELD not in second and second["student_weights"]["w"] == "big"
    changed = content("other")
    assert refer(changed, holds) is changed  # another content id: sent in full


def test_a_reference_the_node_cannot_honour_is_refused() -> None:
    ref = refer(content("big"), held_ids(content("big"), ["student_weights"]))
    with pytest.raises(WireError, match="student_weights.*does not hold"):
        restore(ref, RecordDict(), ["student_weights"], "coordinator")
    state = RecordDict()
    restore(content("old"), state, ["student_weights"], "coordinator")
    with pytest.raises(WireError, match="does not hold"):
        restore(refer(content("big"), held_ids(content("big"), ["student_weights"])), state, [], "coordinator")
    bad = content("x")
    bad[HELD] = ConfigRecord({"names": ["a"], "ids": []})
    with pytest.raises(WireError, match="equal length"):
        restore(bad, state, [], "coordinator")
