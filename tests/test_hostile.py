"""A broken or hostile partner cannot hurt the federation: each test drives the real coordinator
(:func:`server.run.run_experiment` on the in-process grid) with one partner that lies, and checks that
it is left out (or outweighed) with a reason while the others go on and nothing leaves the run folder."""

from __future__ import annotations

import dataclasses
import shutil
import socket
from collections.abc import Callable
from typing import Any
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

import test_dataset
from fusion_toys import TOLERANCE_NM
from clients import handlers
from clients.client_app import app as client_app
from clients.institution import InstitutionSpec
from flower_harness import InProcessGrid
from fusion import Registry
from fusion.registry import RegistryError
from geodata.manifest import Manifest
from geodata.raster import write_geotiff
from geodata.stats import load_or_compute_stats
from pipeline.settings import RunSettings, load_experiment
from pipeline.fedavg import group_card
from specialists.trunk import DEFAULT_VARIANT
from pipeline.roster import Roster
from server.phases.discover import simulated_record
from server.run import run_experiment
from tiny_run import simulated_nodes, tamper_replies, tiny_run_config
from wire.messages import SIZE_MAXIMA, TRAIN_MAXIMA, IdentifyReply

HOSTILE = 102


def _impostor(config: dict[str, str], real: str, declared: dict[str, str], tiles: dict[str, int] | None = None,
              tamper: Callable[[Message], Message] = lambda reply: reply, hostile: dict[int, str] | None = None,
              **summary: Any):
    """A ClientApp whose node :data:`HOSTILE` declares the institution record ``declared`` (and ``tiles``
    and the other ``summary`` fields in its summary), serves it with the data of the experiment's
    simulated institution ``real`` and passes its replies through ``tamper`` (the other nodes are
    honest). ``hostile`` (node id -> declared institution name) makes several such colluding nodes."""
    hostile = hostile or {HOSTILE: declared["institution"]}
    summaries = summary
    cfg, _ = load_experiment(RunSettings.from_run_config(config))
    record = simulated_record(cfg, real, Path(cfg.cache_dir).resolve())

    def app(message: Message, context: Context) -> Message:
        if context.node_id not in hostile:
            return client_app(message, context)
        if message.metadata.message_type == "query.identify":
            name = hostile[context.node_id]
            summary = handlers._summary(InstitutionSpec.from_record(record, "test"))
            summary = dataclasses.replace(summary, **summaries, institution=name, tiles=tiles or summary.tiles)
            return Message(IdentifyReply("declared", {**declared, "institution": name}, summary=summary).encode(),
                           reply_to=message)
        message.content["institution"] = ConfigRecord(record)
        return tamper(client_app(message, context))

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


def _constant(reply: Message) -> Message:
    """A train reply whose every floating tensor is 100 and which claims 10^12 examples."""
    if reply.metadata.message_type != "train.specialist" or reply.has_error():
        return reply
    for name in ("encoder", "head"):
        state = reply.content.array_records[name].to_torch_state_dict()
        reply.content[name] = ArrayRecord({k: torch.full_like(v, 100.0) if v.is_floating_point() else v
                                           for k, v in state.items()})
    metrics = dict(reply.content.metric_records["metrics"])
    reply.content["metrics"] = MetricRecord({**metrics, "num_examples": 1e12})
    return reply


def _largest_weight(run_dir: Path) -> float:
    """The largest absolute value of the enrolled Sentinel-2 specialist's encoder weights."""
    encoder = Registry(run_dir / "registry").load("sentinel2_l2a-scene").encoder.state_dict()
    return max(float(v.abs().max()) for v in encoder.values() if v.is_floating_point())


def test_one_of_three_partners_claiming_a_huge_count_cannot_take_over_the_specialist(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=enrol")
    declared = {"institution": "evil", "sensor": "sentinel2_l2a", "task": "scene"}
    app = _impostor(tiny_run_config(tmp_path), "north_s2", declared, {"train": 10**12, "val": 1, "test": 1},
                    _constant)
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), app=app), config, flower_run_id=1)
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    group = trained["groups"]["sentinel2_l2a-scene"]
    assert sorted(group["members"]) == ["evil", "north_s2", "south_s2"] and group["rounds_applied"] == 2
    refused = [(f["round"], f["institution"]) for f in trained["failures"] if "update_factor" in f["reason"]]
    assert refused == [(1, "evil"), (2, "evil")]
    assert _largest_weight(run_dir) < 50


@pytest.mark.parametrize("how", ["median", "trimmed_mean"])
def test_robust_aggregation_outvotes_a_constant_partner_without_screening(tmp_path: Path, how: str) -> None:
    config = tiny_run_config(tmp_path, f"~institutions.city_aerial stop_after=enrol train.update_factor=0 "
                                       f"train.aggregation={how}")
    declared = {"institution": "evil", "sensor": "sentinel2_l2a", "task": "scene"}
    app = _impostor(tiny_run_config(tmp_path), "north_s2", declared, None, _constant)
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), app=app), config, flower_run_id=1)
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    assert trained["groups"]["sentinel2_l2a-scene"]["rounds_applied"] == 2
    assert _largest_weight(run_dir) < 50


def _shifted(reply: Message) -> Message:
    """A train reply whose floating tensors are shifted by 0.01 and which claims 10^12 examples."""
    if reply.metadata.message_type != "train.specialist" or reply.has_error():
        return reply
    for name in ("encoder", "head"):
        state = reply.content.array_records[name].to_torch_state_dict()
        reply.content[name] = ArrayRecord({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()})
    reply.content["metrics"] = MetricRecord({**reply.content.metric_records["metrics"], "num_examples": 1e12})
    return reply


@pytest.mark.parametrize("nodes, tamper", [(3, _constant), (4, _shifted)])
def test_two_colluding_partners_with_identical_updates_share_one_cap_and_refuse_no_honest_member(
        tmp_path: Path, nodes: int, tamper: Callable[[Message], Message]) -> None:
    """Row 2 of issue 20: two partners sending one update (and huge claims) beside one or two honest
    members; they count as one member, so no honest member is refused and they carry at most one cap."""
    honest = ["north_s2", "south_s2"][:nodes - 2]
    config = tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=train"
                             + " ~institutions.south_s2" * ("south_s2" not in honest))
    declared = {"institution": "evil", "sensor": "sentinel2_l2a", "task": "scene"}
    hostile = {100 + nodes - 2: "evil", 100 + nodes - 1: "evil2"}
    app = _impostor(tiny_run_config(tmp_path), "north_s2", declared, {"train": 10**12, "val": 1, "test": 1},
                    tamper, hostile)
    run_dir = run_experiment(InProcessGrid(simulated_nodes(nodes), app=app), config, flower_run_id=1)
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    group = trained["groups"]["sentinel2_l2a-scene"]
    assert sorted(group["members"]) == ["evil", "evil2", *honest]
    assert group["rounds_applied"] == 2
    for record in group["history"]:
        assert not set(record["refused"]) - set(hostile.values())
        assert record["shares"].get("evil", 0) + record["shares"].get("evil2", 0) <= 0.5 + 1e-9


SUMMARIES = {"unknown_task_type": ("task_type", "alien",
                                   "makes no valid specialist card: card: field 'task_type' is 'alien'"),
             "overflowing_band_mean": ("norm_mean", None, "band B01: declared mean 1e+200 and std 0.01667 are "
                                                          "beyond what sensor 'sentinel2_l2a' can hold")}


@pytest.mark.parametrize("case", sorted(SUMMARIES))
def test_a_malformed_data_summary_leaves_its_partner_out_and_the_others_train(tmp_path: Path, case: str) -> None:
    key, value, reason = SUMMARIES[case]

    def faults(message: Message):
        institution = message.content.config_records.get("institution", {}).get("institution")
        if message.metadata.message_type != "query.describe" or institution != "south_s2":
            return None

        def tamper(reply: Message) -> Message:
            summary = reply.content.config_records["summary"]
            summary[key] = value if value is not None else [1e200] * len(summary["bands"])
            return reply
        return tamper

    config = tiny_run_config(tmp_path, "stop_after=train")
    for attempt in (1, 2):  # a resume does not repeat a crash either
        run_dir = run_experiment(InProcessGrid(simulated_nodes(3), faults=faults), config, flower_run_id=attempt)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    [failure] = roster["failures"]
    assert failure["institution"] == "south_s2" and failure["step"] == "describe"
    assert reason in failure["reason"]
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    assert {g: r["members"] for g, r in trained["groups"].items()} == {
        "sentinel2_l2a-scene": ["north_s2"], "aerial_rgbn-landcover": ["city_aerial"]}
    assert all(r["rounds_applied"] == 2 for r in trained["groups"].values())


def test_train_settings_beyond_the_node_maxima_are_refused_by_the_node_naming_the_field(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, f"~institutions.city_aerial stop_after=train "
                                       f"train.local_epochs={TRAIN_MAXIMA['epochs'] + 1}")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2)), config, flower_run_id=1)
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    assert trained["groups"]["sentinel2_l2a-scene"]["specialist"] is None
    reasons = {f["institution"]: f["reason"] for f in trained["failures"]}
    assert sorted(reasons) == ["north_s2", "south_s2"]
    assert all(f"train.epochs must be an integer in [1, {TRAIN_MAXIMA['epochs']}]" in r for r in reasons.values())


@pytest.mark.parametrize("extra, reason", [("stop_after=trian", "stop_after 'trian' is not a phase"),
                                           ("train.variant=hf-hub:evil/model",
                                            "train.variant: variant 'hf-hub:evil/model'"),
                                           ("integrate=nowhere", "integrate: run 'nowhere' has no enrolled registry"),
                                           ("distill.variant=hf-hub:evil/model",
                                            "distill.variant: variant 'hf-hub:evil/model'"),
                                           ("prune.task=../../x", "prune.task '../../x' must be"),
                                           ("prune.task=landcover", "prune.task 'landcover' is not a classification"),
                                           ("evaluate.seeds=[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]",
                                            r"evaluate.seeds must list 1 to 16 integers"),
                                           ("evaluate.batch_size=100000", "evaluate.batch_size and train.batch_size")])
def test_a_wrong_run_config_fails_before_the_run_folder_exists(tmp_path: Path, extra: str, reason: str) -> None:
    grid = InProcessGrid(simulated_nodes(1))
    with pytest.raises(ValueError, match=reason):
        run_experiment(grid, tiny_run_config(tmp_path, extra), flower_run_id=1)
    assert not (tmp_path / "fl").exists() and grid.sent == []


def test_a_registry_index_path_leaving_the_registry_is_refused_and_nothing_is_written_outside(tmp_path: Path) -> None:
    first = run_experiment(InProcessGrid(simulated_nodes(2)),
                           tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=enrol", "first"), 1)
    index_path = first / "registry" / "index.json"
    index = json.loads(index_path.read_text())
    shutil.copytree(first / "registry" / index["specialists"][0]["path"], first / "outside")
    index["specialists"][0]["path"] = "../outside"
    index_path.write_text(json.dumps(index))
    with pytest.raises(RegistryError, match="field 'path' is '../outside'"):
        Registry(first / "registry")
    with pytest.raises(RuntimeError, match="field 'path' is '../outside'"):
        run_experiment(InProcessGrid(simulated_nodes(2)),
                       tiny_run_config(tmp_path, "stop_after=enrol integrate=first", "second"), 2)
    assert not (tmp_path / "second" / "outside").exists()


def test_an_upload_padded_with_an_unknown_key_is_refused_before_it_is_deserialised(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    limit = 20 * 2**20
    deserialised: list[int] = []
    real = ArrayRecord.to_torch_state_dict

    def spy(record: ArrayRecord):
        deserialised.append(record.count_bytes())
        return real(record)

    def faults(message: Message):
        institution = message.content.config_records.get("institution", {}).get("institution")
        if message.metadata.message_type != "query.enrol" or institution != "north_s2":
            return None

        def pad(reply: Message) -> Message:
            weights = reply.content.array_records["weights"]
            weights["padding"] = Array(torch.zeros(limit, dtype=torch.uint8).numpy())
            return reply
        return pad

    monkeypatch.setattr(ArrayRecord, "to_torch_state_dict", spy)
    config = tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=enrol enrol.max_upload_mb=20")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), faults=faults), config, flower_run_id=1)
    enrol = json.loads((run_dir / "phases" / "enrol.json").read_text())
    [failure] = enrol["failures"]
    assert failure["institution"] == "north_s2" and "must hold just ['safetensors']" in failure["reason"]
    assert enrol["enrolled"]["sentinel2_l2a-scene"]["holder"] == "south_s2"
    assert max(deserialised) < limit  # the padded record was never deserialised


def test_a_kept_card_naming_a_hub_model_is_refused_without_network_and_the_next_keeper_delivers(
        tmp_path: Path, monkeypatch) -> None:
    attempts: list[object] = []

    def no_network(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network is off in this test")

    def faults(message: Message):
        institution = message.content.config_records.get("institution", {}).get("institution")
        if message.metadata.message_type != "query.enrol" or institution != "north_s2":
            return None

        def hub(reply: Message) -> Message:
            card = json.loads(reply.content.config_records["card"]["json"])
            reply.content["card"] = ConfigRecord({"json": json.dumps({**card, "variant": "hf-hub:evil/model"})})
            return reply
        return hub

    monkeypatch.setattr(socket.socket, "connect", no_network)
    config = tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=enrol")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), faults=faults), config, flower_run_id=1)
    enrol = json.loads((run_dir / "phases" / "enrol.json").read_text())
    [failure] = enrol["failures"]
    assert failure["institution"] == "north_s2" and "variant 'hf-hub:evil/model' is not a local" in failure["reason"]
    assert enrol["enrolled"]["sentinel2_l2a-scene"]["holder"] == "south_s2"
    assert attempts == []


def test_band_statistics_of_a_file_rewritten_in_place_are_recomputed(tmp_path: Path) -> None:
    manifest = test_dataset.tiny_manifest(tmp_path, np.full((13, 8, 8), 1000, np.uint16))
    first = load_or_compute_stats(manifest, test_dataset.L1C)
    tile = tmp_path / "tile.tif"
    stamp = tile.stat().st_mtime_ns
    write_geotiff(tile, np.full((13, 8, 8), 3000, np.uint16), from_origin(400000, 5000000, 10, 10), "EPSG:32633",
                  nodata=0)
    os.utime(tile, ns=(stamp + 10**9, stamp + 10**9))
    second = load_or_compute_stats(manifest, test_dataset.L1C)
    assert second.mean[0] == pytest.approx(3 * first.mean[0])


def test_band_statistics_of_a_file_rewritten_with_its_size_and_mtime_kept_are_recomputed(tmp_path: Path) -> None:
    """Row 8 of issue 20: the statistics cache is keyed by content: a tile rewritten in place to the same
    size, its modification time put back (as ``cp -p`` or ``touch -r`` do), does not read stale statistics."""
    manifest = test_dataset.tiny_manifest(tmp_path, np.full((13, 8, 8), 1000, np.uint16))
    first = load_or_compute_stats(manifest, test_dataset.L1C)
    tile = tmp_path / "tile.tif"
    before = tile.stat()
    write_geotiff(tile, np.full((13, 8, 8), 3000, np.uint16), from_origin(400000, 5000000, 10, 10), "EPSG:32633",
                  nodata=0)
    os.utime(tile, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (tile.stat().st_size, tile.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert load_or_compute_stats(manifest, test_dataset.L1C).mean[0] == pytest.approx(3 * first.mean[0])


def test_a_specialists_weights_reach_only_its_own_group_unless_sharing_is_opted_in(tmp_path: Path) -> None:
    received: dict[str, list[str]] = {}

    def faults(message: Message):
        if message.metadata.message_type == "evaluate.fusion":
            institution = message.content.config_records["institution"]["institution"]
            ensemble = message.content.config_records.get("ensemble")
            received[institution] = sorted(ensemble["names"]) if ensemble else []
        return None

    config = tiny_run_config(tmp_path, "stop_after=evaluate")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), faults=faults), config, flower_run_id=1)
    assert received == {"north_s2": ["sentinel2_l2a-scene"], "south_s2": ["sentinel2_l2a-scene"],
                        "city_aerial": ["aerial_rgbn-landcover"]}
    sharing = json.loads((run_dir / "phases" / "evaluate.json").read_text())["weights_sharing"]
    assert sharing == {"policy": "own group only", "sent": received}

    received.clear()
    shared = tiny_run_config(tmp_path, "stop_after=evaluate enrol.share_weights=true", "shared")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), faults=faults), shared, flower_run_id=2)
    assert received["north_s2"] == ["aerial_rgbn-landcover", "sentinel2_l2a-scene"]
    assert json.loads((run_dir / "phases" / "evaluate.json").read_text())["weights_sharing"]["policy"] == \
        "shared with every reader"


def test_an_edited_card_is_refused_by_evaluate_naming_the_field(tmp_path: Path, capsys) -> None:
    """Row 6: a specialist's card.json edited after enrolment (bands swapped): ``eosfed evaluate`` exits 2
    with one line naming the card and the field, instead of scoring with the wrong band order."""
    from fusion_toys import S2_BANDS, make_specialist

    from eosfed.cli import main
    from geodata.synth import generate_world, load_world_config
    from specialists import save_specialist

    generate_world(load_world_config("tiny"), tmp_path / "world", progress=False)
    folder = save_specialist(make_specialist("s2", "sentinel2_l2a", S2_BANDS), tmp_path / "s2")
    card = json.loads((folder / "card.json").read_text())
    card["bands"][0], card["bands"][1] = card["bands"][1], card["bands"][0]
    (folder / "card.json").write_text(json.dumps(card))
    code = main(["evaluate", "--encoder", str(folder), "--manifest", str(tmp_path / "world" / "manifest.json"),
                 "--task", "scene", "--sensor", "sentinel2_l2a", "--out", str(tmp_path / "eval.json"),
                 "--fractions", "1", "--seeds", "0", "--size", "32"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eosfed evaluate: error")]
    assert code == 2 and len(err) == 1 and "card.json" in err[0] and "bands" in err[0]
    assert not (tmp_path / "eval.json").exists()


def _overflow(reply: Message) -> None:
    """Every target 1e6 in float32 (finite on the wire, inf in float16)."""
    for name in ("stage2", "stage3", "pooled"):
        targets = reply.content.array_records["targets"]
        targets[name] = Array(np.full(targets[name].numpy().shape, 1e6, np.float32))


def _crop(reply: Message) -> None:
    """``stage2`` one column narrower."""
    targets = reply.content.array_records["targets"]
    targets["stage2"] = Array(np.ascontiguousarray(targets["stage2"].numpy()[..., :-1]))


def _half_ids(reply: Message) -> None:
    """The first half of the ids and their rows."""
    ids, targets = reply.content.config_records["ids"], reply.content.array_records["targets"]
    keep = len(ids["ids"]) // 2
    ids["ids"] = list(ids["ids"])[:keep]
    for name in ("stage2", "stage3", "pooled"):
        targets[name] = Array(np.ascontiguousarray(targets[name].numpy()[:keep]))


FEATURES = {"overflow": (_overflow, "beyond the float16 range"), "crop": (_crop, "target 'stage2' should be"),
            "half_ids": (_half_ids, "reply ids are not the")}


@pytest.mark.parametrize("case", sorted(FEATURES))
def test_a_teacher_replying_bad_features_is_left_out_with_its_reason_and_the_student_stays_finite(
        tmp_path: Path, case: str) -> None:
    """Row 3 of issue 20: a weights-home holder's feature reply that overflows float16, has a wrong
    spatial size or half the ids is refused with its reason; the other teacher distils a finite student."""
    tamper, reason = FEATURES[case]

    faults = tamper_replies("query.features", "north_s2", tamper)
    config = tiny_run_config(tmp_path, "enrol.weights=home ~institutions.south_s2 stop_after=distill")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), faults=faults), config, flower_run_id=1)
    distill = json.loads((run_dir / "phases" / "distill.json").read_text())
    [failure] = distill["failures"]
    assert failure["institution"] == "north_s2" and reason in failure["reason"]
    assert distill["remote_teachers"] == distill["teachers"] == ["aerial_rgbn-landcover"]
    assert all(np.isfinite(distill["history"]["total"]))


def _cards_sent(grid: InProcessGrid) -> list[dict]:
    """Every card JSON the coordinator sent to a node (group cards, ensemble cards, the student card)."""
    cards = []
    for message in grid.sent:
        records = message.content.config_records
        for name in ("card", "student_card"):
            if name in records:
                cards.append(json.loads(records[name]["json"]))
        if "ensemble" in records:
            cards += [json.loads(text) for text in records["ensemble"]["cards"]]
    return cards


def test_cards_sent_to_partners_carry_no_other_partners_scores_or_counts(tmp_path: Path) -> None:
    """Row 5 of issue 20: the group card each member gets (every round, at the final evaluation, in its
    ensemble) and the student card hold no member's tiles, scores or round history, nor the teachers'
    hashes; the coordinator keeps them in its own report."""
    grid = InProcessGrid(simulated_nodes(2))
    run_dir = run_experiment(grid, tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=evaluate"), 1)
    cards = _cards_sent(grid)
    assert {c["kind"] for c in cards} == {"specialist", "student"} and len(cards) >= 6
    for card in cards:
        assert not card.get("data_summary") and not card.get("metrics") and not card.get("extra")
        assert not card.get("teachers") and not card.get("distill")
        assert "per_institution" not in json.dumps(card) and "north_s2" not in json.dumps(card.get("extra", {}))
    group = json.loads((run_dir / "phases" / "train.json").read_text())["groups"]["sentinel2_l2a-scene"]
    assert sorted(group["per_institution"]) == ["north_s2", "south_s2"]
    kept = json.loads((run_dir / "registry" / "sentinel2_l2a-scene" / "card.json").read_text())
    assert sorted(kept["extra"]["federation"]["per_institution"]) == ["north_s2", "south_s2"]
    assert json.loads((run_dir / "student" / "card.json").read_text())["teachers"]


def test_a_name_squatter_is_refused_by_name_and_the_node_bound_to_the_name_stays_in(tmp_path: Path) -> None:
    """Row 6 of issue 20: ``lab-a`` is bound to node 102, which declared it first in the run; on resume a
    node with a lower id (101) also declares ``lab-a``: it is refused by name, 102 stays ``lab-a``."""
    config = tiny_run_config(tmp_path, "~institutions.north_s2 ~institutions.city_aerial stop_after=discover")
    full = tiny_run_config(tmp_path)
    declared = {"institution": "lab-a", "sensor": "sentinel2_l2a", "task": "scene"}
    first = _impostor(full, "north_s2", declared, hostile={HOSTILE: "lab-a"})
    run_experiment(InProcessGrid(simulated_nodes(3), app=first), config, flower_run_id=1)
    squatted = _impostor(full, "north_s2", declared, hostile={101: "lab-a", HOSTILE: "lab-a"})
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), app=squatted), config, flower_run_id=2)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert roster["institutions"]["lab-a"]["node_id"] == HOSTILE and roster["bindings"] == {"lab-a": HOSTILE}
    [failure] = roster["failures"]
    assert failure["node_id"] == 101 and f"'lab-a' is bound to node {HOSTILE}" in failure["reason"]
    assert roster["groups"]["sentinel2_l2a-scene"]["members"] == ["lab-a", "south_s2"]


def test_a_name_declared_by_two_nodes_before_any_binding_is_taken_from_neither(tmp_path: Path) -> None:
    """Row 6 of issue 20: two nodes declaring ``lab-a`` in a run's first discovery cannot be told apart:
    both are refused by name (neither can receive the group's weights as ``lab-a``), the others go on."""
    config = tiny_run_config(tmp_path, "~institutions.north_s2 ~institutions.city_aerial stop_after=discover")
    declared = {"institution": "lab-a", "sensor": "sentinel2_l2a", "task": "scene"}
    app = _impostor(tiny_run_config(tmp_path), "north_s2", declared, hostile={101: "lab-a", HOSTILE: "lab-a"})
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), app=app), config, flower_run_id=1)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert sorted(f["node_id"] for f in roster["failures"]) == [101, HOSTILE]
    assert all("declared by nodes [101, 102] at once" in f["reason"] for f in roster["failures"])
    assert sorted(roster["institutions"]) == ["south_s2"] and roster["bindings"] == {}


def test_band_statistics_beyond_what_the_sensor_can_hold_leave_their_partner_out(tmp_path: Path) -> None:
    """Row 4 of issue 20: a third Sentinel-2 member declares a band std of 1e12 (uint16 reflectance holds
    at most 6.55): it is left out naming the band and the range; the group pools honest statistics."""
    config = tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=train")
    declared = {"institution": "evil", "sensor": "sentinel2_l2a", "task": "scene"}
    app = _impostor(tiny_run_config(tmp_path), "north_s2", declared, norm_std=[1e12] * 12)
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), app=app), config, flower_run_id=1)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    [failure] = roster["failures"]
    assert failure["institution"] == "evil" and failure["step"] == "identify"
    assert ("band B01: declared mean 0.3179 and std 1e+12 are beyond what sensor 'sentinel2_l2a' can hold "
            "(values in [0, 6.554], so std <= 3.277)") in failure["reason"]
    group = json.loads((run_dir / "phases" / "train.json").read_text())["groups"]["sentinel2_l2a-scene"]
    assert group["members"] == ["north_s2", "south_s2"] and group["rounds_applied"] == 2
    card = json.loads((run_dir / "specialists" / "sentinel2_l2a-scene" / "card.json").read_text())
    assert max(card["norm_std"]) < 1


CONSTANT = {"norm_mean": [6.0] * 12, "norm_std": [1e-6] * 12}  # within uint16 reflectance, far from the others


def test_band_statistics_implausible_beside_the_groups_median_are_left_out_of_its_pooling_by_name(
        tmp_path: Path) -> None:
    """Row 4 of issue 20: a third member declares a bright constant (mean 6, std 1e-6): the median of the
    group's three members leaves it out by name, with the band, its values and the median."""
    config = tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=discover")
    declared = {"institution": "evil", "sensor": "sentinel2_l2a", "task": "scene"}
    app = _impostor(tiny_run_config(tmp_path), "north_s2", declared, **CONSTANT)
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), app=app), config, flower_run_id=1)
    roster = Roster.from_dict(json.loads((run_dir / "phases" / "discover.json").read_text()))
    [failure] = roster.failures
    assert failure["institution"] == "evil" and failure["step"] == "statistics"
    assert ("band B01: declared mean 6 and std 1e-06 are implausible beside the group's median mean 0.3179"
            in failure["reason"])
    assert sorted(roster.institutions) == ["north_s2", "south_s2"]
    assert roster.groups["sentinel2_l2a-scene"].members == ["north_s2", "south_s2"]


def test_two_members_whose_band_statistics_disagree_each_train_alone_with_the_reason(tmp_path: Path) -> None:
    """Row 4 of issue 20: with two members neither can outvote the other: the pair is split, each named
    with the reason, and the honest member's card keeps its own statistics."""
    config = tiny_run_config(tmp_path, "~institutions.city_aerial ~institutions.south_s2 stop_after=discover")
    declared = {"institution": "evil", "sensor": "sentinel2_l2a", "task": "scene"}
    app = _impostor(tiny_run_config(tmp_path), "north_s2", declared, hostile={101: "evil"}, **CONSTANT)
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), app=app), config, flower_run_id=1)
    roster = Roster.from_dict(json.loads((run_dir / "phases" / "discover.json").read_text()))
    assert sorted(f["institution"] for f in roster.failures) == ["evil", "north_s2"]
    assert all("two members cannot outvote each other, so each trains alone" in f["reason"] for f in roster.failures)
    assert sorted(g.members for g in roster.groups.values()) == [["evil"], ["north_s2"]]
    [honest] = [g for g in roster.groups.values() if g.members == ["north_s2"]]
    card = group_card(honest, [roster.institutions["north_s2"]], DEFAULT_VARIANT, 0.5)
    assert card.norm_std == pytest.approx(roster.institutions["north_s2"].summary.norm_std)


def test_a_node_keeping_its_weights_home_refuses_a_coordinator_asking_for_them(tmp_path: Path) -> None:
    """Row 8 of issue 20: ``weights="home"`` in north_s2's node config: a coordinator asking for the
    weights (``enrol.weights: send``) gets the node's refusal naming the setting; the next keeper enrols."""
    nodes = simulated_nodes(2)
    nodes[100]["weights"] = "home"
    config = tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=enrol")
    run_dir = run_experiment(InProcessGrid(nodes), config, flower_run_id=1)
    enrol = json.loads((run_dir / "phases" / "enrol.json").read_text())
    [failure] = enrol["failures"]
    assert failure["institution"] == "north_s2"
    assert "institution 'north_s2' keeps its specialists' weights home (node config weights=\"home\")" in \
        failure["reason"]
    assert enrol["enrolled"]["sentinel2_l2a-scene"]["holder"] == "south_s2"


def test_a_summary_with_more_classes_than_a_node_may_hold_is_refused_naming_the_field(tmp_path: Path) -> None:
    """Row 8 of issue 20: a declared summary of 200,000 classes is refused at decode (nothing is built
    for it), its partner left out naming ``summary.classes``; the others train."""
    config = tiny_run_config(tmp_path, "~institutions.city_aerial stop_after=discover")
    declared = {"institution": "evil", "sensor": "sentinel2_l2a", "task": "scene"}
    app = _impostor(tiny_run_config(tmp_path), "north_s2", declared, classes=[f"c{i}" for i in range(200_000)])
    run_dir = run_experiment(InProcessGrid(simulated_nodes(3), app=app), config, flower_run_id=1)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    [failure] = roster["failures"]
    assert failure["node_id"] == HOSTILE and "summary.classes must be" in failure["reason"]
    assert f"at most {SIZE_MAXIMA['classes']} (SIZE_MAXIMA)" in failure["reason"]
    assert roster["groups"]["sentinel2_l2a-scene"]["members"] == ["north_s2", "south_s2"]


def _probe_request(**probe: Any) -> RecordDict:
    """An ``evaluate.fusion`` request for the simulated north_s2 whose probe settings are ``probe``."""
    settings = {"fractions": [1.0], "seeds": [0], "batch_size": 8, "device": "cpu", "bands": ["B02"], **probe}
    return RecordDict({"institution": ConfigRecord({"institution": "north_s2", "sensor": "sentinel2_l2a",
                                                    "task": "scene"}),
                       "probe": ConfigRecord(settings), "student_card": ConfigRecord({"json": "{}"}),
                       "student_weights": ArrayRecord({"safetensors": Array(np.zeros(1, np.uint8))})})


def _features_request(ids: int, side: int) -> RecordDict:
    """A ``query.features`` request for ``ids`` images of one band, ``side`` px high and 1 px wide."""
    return RecordDict({"institution": ConfigRecord({"institution": "north_s2", "sensor": "sentinel2_l2a",
                                                    "task": "scene"}),
                       "request": ConfigRecord({"sha256": "0" * 64, "bands": ["B02"],
                                                "ids": [f"t{i}" for i in range(ids)], "tolerance_nm": 50.0}),
                       "images": ArrayRecord({"x": Array(np.zeros((ids, 1, side, 1), np.float32))})})


NODE_BOUNDS = {
    "probe_fractions": ("evaluate.fusion", _probe_request(fractions=[0.5] * 17), "probe.fractions must be"),
    "probe_seeds": ("evaluate.fusion", _probe_request(seeds=[2**40]), "probe.seeds must be a non-empty list of "
                                                                      "integers in [0, 4294967295]"),
    "probe_batch": ("evaluate.fusion", _probe_request(batch_size=10**6), "probe.batch_size must be an integer in "
                                                                          "[1, 1024]"),
    "feature_ids": ("query.features", _features_request(SIZE_MAXIMA["ids"] + 1, 1), "request.ids must be"),
    "feature_image": ("query.features", _features_request(1, SIZE_MAXIMA["image_px"] + 1),
                      "images.x must be at most 2048 px a side"),
}


@pytest.mark.parametrize("case", sorted(NODE_BOUNDS))
def test_a_request_beyond_the_size_maxima_is_refused_by_the_node_naming_the_field(case: str, monkeypatch) -> None:
    """Row 8 of issue 20: counts and sizes a coordinator asks of a node (probe fractions, seeds, batch
    size; feature ids and image size) are bounded at decode, before any work."""
    from flwr.supercore.task_identity import TaskIdentity

    for key in ("_task_id", "_run_id", "_node_id"):  # what flwr-serverapp sets before a Message is made
        monkeypatch.setattr(TaskIdentity, key, 1, raising=False)
    message_type, content, reason = NODE_BOUNDS[case]
    context = Context(run_id=1, node_id=100, node_config={"partition-id": 0, "num-partitions": 1},
                      state=RecordDict(), run_config={})
    message = Message(content, 100, message_type)
    handler = handlers.evaluate_fusion if message_type == "evaluate.fusion" else handlers.features
    with pytest.raises(ValueError, match=re.escape(reason)):
        handler(message, context)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.tif", "sub/../../outside.tif"])
def test_a_manifest_tile_path_leaving_its_folder_is_refused_naming_the_manifest_and_tile(
        tmp_path: Path, capsys, path: str) -> None:
    """Row 8 of issue 20: a supplied manifest whose tile points outside its folder (absolute or ``..``)
    is refused by ``eosfed train-specialist`` with one line naming the manifest and the tile; the same
    manifest saying ``"allow_outside_paths": true`` reads the file."""
    from eosfed.cli import main

    folder = tmp_path / "data"
    test_dataset.tiny_manifest(folder, np.full((13, 8, 8), 1000, np.uint16))
    shutil.move(folder / "tile.tif", tmp_path / "outside.tif")
    raw = json.loads((folder / "manifest.json").read_text())
    raw["tiles"][0]["path"] = path
    (folder / "manifest.json").write_text(json.dumps(raw))
    code = main(["train-specialist", "--manifest", str(folder / "manifest.json"), "--task", "task",
                 "--sensor", test_dataset.L1C, "--out", str(tmp_path / "spec"), "--epochs", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and str(folder / "manifest.json") in err[0]
    assert f"tile 'tiny' path '{path}' leaves the manifest's folder" in err[0]
    assert not (tmp_path / "spec").exists()
    if path.startswith(".."):
        raw["allow_outside_paths"] = True
        (folder / "manifest.json").write_text(json.dumps(raw))
        assert Manifest.load(folder / "manifest.json").resolve(path).resolve() == (tmp_path / "outside.tif").resolve()


def test_a_teacher_whose_features_overflow_stops_the_distillation_before_the_student_changes() -> None:
    """A local teacher whose weights are 1000 x too large (finite, checked as a file) gives features beyond
    float16 in the cache: the first step's loss is not finite, so :func:`fusion.distill.distill_student`
    stops with a clear error and the student's weights are untouched."""
    from fusion_toys import S2_BANDS, make_specialist, proxy_batches

    from fusion.adaptors import TeacherRef
    from fusion.distill import DistillConfig, distill_student
    from fusion.student import Student
    from fusion.teacher_cache import TeacherCache, fill_cache
    from specialists.io import specialist_to_bytes

    teacher = make_specialist("s2", "sentinel2_l2a", S2_BANDS)
    with torch.no_grad():
        for p in teacher.encoder.parameters():
            p.mul_(1e3)
    specialist_to_bytes(teacher)  # its weights' hash keys the cache
    student = Student.create(band_stats={"B04": [0.2, 0.1]}, seed=0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    batches, cache = proxy_batches(S2_BANDS, n_batches=1, batch=2), TeacherCache()
    fill_cache(cache, {"s2": teacher}, batches, tolerance_nm=TOLERANCE_NM)
    with pytest.raises(FloatingPointError, match=r"distillation loss is not finite \(per teacher \{'s2': nan\}\)"):
        distill_student(student, [TeacherRef.of(teacher, "s2")], batches, cache, DistillConfig(epochs=1), seed=0)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
