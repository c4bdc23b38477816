"""A broken or hostile partner cannot hurt the federation: each test drives the real coordinator
(:func:`server.run.run_experiment` on the in-process grid) with one partner that lies, and checks that
it is left out (or outweighed) with a reason while the others go on and nothing leaves the run folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message

from clients import handlers
from clients.client_app import app as client_app
from clients.institution import InstitutionSpec
from flower_harness import InProcessGrid
from fusion import Registry
from pipeline.settings import RunSettings, load_experiment
from server.phases.discover import simulated_record
from server.run import run_experiment
from tiny_run import simulated_nodes, tiny_run_config
from wire.messages import IdentifyReply

HOSTILE = 102


def _impostor(config: dict[str, str], real: str, declared: dict[str, str]):
    """A ClientApp whose node :data:`HOSTILE` declares the institution record ``declared`` and serves it
    with the data of the experiment's simulated institution ``real`` (the other nodes are honest)."""
    cfg, _ = load_experiment(RunSettings.from_run_config(config))
    record = simulated_record(cfg, real, Path(cfg.cache_dir).resolve())

    def app(message: Message, context: Context) -> Message:
        if context.node_id != HOSTILE:
            return client_app(message, context)
        if message.metadata.message_type == "query.identify":
            summary = handlers._summary(InstitutionSpec.from_record(record, "test"))
            summary = dataclasses.replace(summary, institution=declared["institution"])
            return Message(IdentifyReply("declared", declared, summary=summary).encode(), reply_to=message)
        message.content["institution"] = ConfigRecord(record)
        return client_app(message, context)

    return app


def test_a_task_name_with_dots_and_slashes_is_left_out_and_writes_nothing_outside(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "deep"
    config = tiny_run_config(out, "~institutions.city_aerial stop_after=enrol")
    full = tiny_run_config(out)  # the world config that still holds city_aerial, whose data the impostor serves
    declared = {"institution": "evil", "sensor": "aerial_rgbn", "task": "x/../../../../ESCAPED"}
    grid = InProcessGrid(simulated_nodes(3), app=_impostor(full, "city_aerial", declared))
    run_dir = run_experiment(grid, config, flower_run_id=1)
    assert not (tmp_path / "runs" / "ESCAPED").exists()
    assert [p for p in tmp_path.rglob("*ESCAPED*")] == []
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    [failure] = [f for f in roster["failures"] if f["node_id"] == HOSTILE]
    assert "institution.task must be a safe name" in failure["reason"] and "x/../../../../ESCAPED" in failure["reason"]
    assert sorted(roster["groups"]) == ["sentinel2_l2a-scene"]  # the others go on
    assert Registry(run_dir / "registry").names == ["sentinel2_l2a-scene"]
