"""The roster: institutions bound to this Flower run's nodes, their groups, idle and failed nodes.

Institutions that observe the same sensor (and bands) for the same task (same task type and classes)
form one group and train one specialist together; a lone institution is a group of one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Collection

from wire.messages import DataSummary

__all__ = ["Member", "Group", "Roster", "form_groups"]

log = logging.getLogger(__name__)


@dataclass
class Member:
    """An institution as the coordinator knows it in this run."""

    name: str
    sensor: str
    task: str
    node_id: int
    simulated: bool
    record: dict[str, Any]  # the institution record sent with every request to it
    summary: DataSummary  # what its node reported about its data (checked at discover)
    bands: list[str]  # the bands its data has, as its node reported them (checked at discover)


@dataclass
class Group:
    name: str
    sensor: str
    task: str
    task_type: str
    classes: list[str]
    members: list[str]


@dataclass
class Roster:
    institutions: dict[str, Member] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    idle_nodes: list[dict[str, Any]] = field(default_factory=list)  # {"node_id", "reason"}
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"node_id", "institution", "step", "reason"}
    num_nodes: int = 0
    bindings: dict[str, int] = field(default_factory=dict)  # declared name -> node first admitted with it in the run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Roster":
        return cls(
            institutions={k: Member(**{**v, "summary": DataSummary(**v["summary"])})
                          for k, v in raw["institutions"].items()},
            groups={k: Group(**v) for k, v in raw["groups"].items()},
            idle_nodes=list(raw["idle_nodes"]),
            failures=list(raw["failures"]),
            num_nodes=int(raw["num_nodes"]),
            bindings={k: int(v) for k, v in raw.get("bindings", {}).items()},
        )

    def signature(self) -> dict[str, list[str]]:
        """Group name -> members: what must not change when a run resumes after training."""
        return {name: sorted(g.members) for name, g in sorted(self.groups.items())}


def form_groups(members: list[Member], apart: Collection[str] = ()) -> dict[str, Group]:
    """Group ``members`` by sensor, task, task type, classes and bands; names are ``<sensor>-<task>``.

    Same sensor and task name with different classes or bands cannot be averaged: such members get
    a separate group with a numbered name, and a warning says why. A member named in ``apart`` is a
    group of its own (its band statistics cannot be pooled with the others').
    """
    by_key: dict[tuple, Group] = {}
    for m in sorted(members, key=lambda m: m.name):
        key = (m.sensor, m.task, m.summary.task_type, tuple(m.summary.classes), tuple(m.bands),
               m.name if m.name in apart else None)
        if key not in by_key:
            by_key[key] = Group(f"{m.sensor}-{m.task}", m.sensor, m.task, key[2], list(key[3]), [])
        by_key[key].members.append(m.name)
    groups: dict[str, Group] = {}
    for group in by_key.values():
        base, n = group.name, 1
        while group.name in groups:
            n += 1
            group.name = f"{base}-{n}"
        if n > 1:
            log.warning("Group %s: %s share sensor and task with %s but not task type/classes/bands (or band "
                        "statistics); kept apart",
                        group.name, group.members, groups[base].members)
        groups[group.name] = group
    return groups
