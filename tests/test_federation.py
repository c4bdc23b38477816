"""The federation machinery in one process: config, discover, groups, failures, resume, data cache."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from flwr.app import ArrayRecord, Message

from flower_harness import InProcessGrid, as_new_sensor
from fusion import Registry, load_student
from geodata.manifest import Manifest
from geodata.readers.eurosat import build_eurosat_manifest
from geodata.sensors import get_sensor
from geodata.synth import build_once
from pipeline import fedavg
from pipeline.roster import Group, Member, Roster
from pipeline.settings import RunSettings, load_experiment
from server.checkpoint import RunCheckpoint
from server.phases.base import PhaseContext
from server.phases import train as train_phase
from server.phases.discover import assign_hosts
from server.run import run_experiment
from tiny_run import simulated_nodes, tiny_run_config
from wire.messages import DataSummary, EvaluateReply, TrainReply, TrainRequest


@pytest.fixture(scope="module")
def eurosat_manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eurosat")
    build_eurosat_manifest(shared_data / "eurosat-ms", out, train_per_class=8, val_per_class=2)
    return out / "manifest.json"


def _run_config(out: Path, manifest: Path, names: list[str], extra: str = "", run_name: str = "t") -> dict:
    institutions = " ".join(
        f"+institutions.{n}={{sensor:sentinel2_l1c,task:scene,manifest:{manifest}}}" for n in names
    )
    overrides = (f"~institutions {institutions} output_dir={out} federation.node_wait_s=1 "
                 "federation.reply_timeout_s=1 stop_after=discover")
    return {"experiment": "default", "overrides": f"{overrides} {extra}", "run-name": run_name}


def test_assign_hosts_round_robin() -> None:
    assert assign_hosts(["a", "b", "c"], [7, 9]) == {"a": 7, "b": 9, "c": 7}
    assert assign_hosts(["a"], [7, 9]) == {"a": 7}
    assert assign_hosts(["a"], []) == {}


def test_train_batches_whole_groups_up_to_a_member_count() -> None:
    """The coordinator holds one batch's messages at a time: groups packed in order, a larger one in chunks."""
    runs = [SimpleNamespace(group=SimpleNamespace(members=[f"m{i}.{j}" for j in range(size)]))
            for i, size in enumerate((2, 1, 3, 5, 1))]
    batches = train_phase._batches(runs, most=4)
    sizes = [[(runs.index(run), len(names)) for run, names in batch] for batch in batches]
    assert sizes == [[(0, 2), (1, 1)], [(2, 3)], [(3, 4)], [(3, 1), (4, 1)]]  # the 5-member group in 4 + 1
    assert [n for batch in batches for _, names in batch for n in names] == [m for r in runs for m in r.group.members]
    assert [[run for run, _ in batch] for batch in train_phase._batches(runs, most=32)] == [runs]  # the demo: one


def _states(rows: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """One state per row: the row's values laid out as three floating tensors and one integer tensor."""
    return [{"a": row[:6].reshape(2, 3).float(), "n": torch.tensor([i]), "b": row[6:7].float(),
             "c": row[7:].reshape(3, 3).float()} for i, row in enumerate(rows)]


@pytest.mark.parametrize("block", [1, 5, 1 << 22])
def test_screen_and_coordinate_wise_aggregation_a_block_at_a_time_match_the_whole(monkeypatch, block: int) -> None:
    """The working copies are float64 blocks of coordinates; the result is the one of the whole float64 matrix."""
    monkeypatch.setattr(fedavg, "BLOCK_VALUES", block)
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(16, generator=g)
    rows = reference + 0.1 * torch.randn(6, 16, generator=g, dtype=torch.float64)
    rows[2] = rows[1] + 1e-6  # indistinct from 1
    rows[5] = reference + 5.0  # far from the rest
    states, ref = _states(rows), _states(reference[None])[0]
    flat = torch.stack([torch.cat([v.reshape(-1).double() for k, v in s.items() if k != "n"]) for s in states])
    assert fedavg.indistinct(states, ref) == [[0], [1, 2], [3], [4], [5]]
    distances = torch.linalg.vector_norm(flat - flat.median(dim=0).values, dim=1)
    refused = fedavg.screen(states, 5.0, ref)
    assert list(refused) == [5] and f"{float(distances[5]):.4g} from the round's" in refused[5]
    for how, whole in (("median", flat.median(dim=0).values), ("trimmed_mean", flat.sort(dim=0).values[1:-1].mean(0))):
        out = fedavg.aggregate(states, [1.0] * 6, how)
        assert torch.equal(torch.cat([out[k].reshape(-1) for k in ("a", "b", "c")]), whole.float())
        assert list(out) == list(states[0]) and torch.equal(out["n"], states[0]["n"])


def _member_app(outlier: str, clones: tuple[str, str]):
    """A ClientApp of fake members (no data, no training): each returns the global weights moved by its own
    seeded noise (the ``clones`` the same, ``outlier`` by 1 more) and measures nothing."""

    def app(message: Message, context) -> Message:
        if message.metadata.message_type != "train.specialist":
            return Message(EvaluateReply({"val_miou": 0.5, "val_count": 2.0}).encode(), reply_to=message)
        request = TrainRequest.decode(message.content, "test")
        name = request.institution["institution"]
        g = torch.Generator().manual_seed(0 if name in clones else int(name[1:]) + 1)
        shift = 1.0 if name == outlier else 0.0
        moved = [{k: v + shift + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                  for k, v in part.items()} for part in (request.encoder, request.head)]
        return Message(TrainReply(*moved, {"num_examples": 8.0, "train_loss": 1.0}).encode(), reply_to=message)

    return app


def _train_fake_group(out: Path, monkeypatch, most: int, block: int) -> tuple[dict, list[list[Message]]]:
    """Phase train of one five-member group of fake members in batches of at most ``most`` members (working
    blocks of ``block`` values): the phase's result and the requests of each exchange."""
    monkeypatch.setattr(train_phase, "MAX_MEMBERS_AT_ONCE", most)
    monkeypatch.setattr(fedavg, "BLOCK_VALUES", block)
    bands = ["RED", "GREEN", "BLUE", "NIR"]
    names = [f"m{i}" for i in range(5)]
    cfg, yaml = load_experiment(RunSettings("quick", (f"output_dir={out}", "train.init=random", "train.rounds=2",
                                                      "train.aggregation=median"), "r"))
    roster = Roster(num_nodes=2)
    for i, name in enumerate(names):
        summary = DataSummary(name, "segmentation", ["x", "y"], bands, {"train": 8, "val": 2}, [0.3] * 4, [0.1] * 4,
                              "manifest.json")
        roster.institutions[name] = Member(name, "aerial_rgbn", "landcover", 100 + i % 2, True,
                                           {"institution": name, "sensor": "aerial_rgbn", "task": "landcover"},
                                           summary, bands)
    roster.groups["g"] = Group("g", "aerial_rgbn", "landcover", "segmentation", ["x", "y"], names)
    grid = InProcessGrid(simulated_nodes(2), app=_member_app("m4", ("m1", "m2")))
    pushes: list[list[Message]] = []
    push = grid.push_messages
    grid.push_messages = lambda messages: (pushes.append(list(messages)), push(pushes[-1]))[1]
    run_dir = out / "r"
    ctx = PhaseContext(grid, cfg, run_dir, out / "cache", RunCheckpoint.open(run_dir, "quick", yaml), ["train"],
                       roster=roster)
    return train_phase.train(ctx), pushes


def test_a_group_trained_in_chunks_of_two_members_gives_the_weights_of_all_at_once(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """The coordinator holds a chunk's messages at a time; the screen and robust aggregation still see every
    member's update of the round, so the specialist is the same (median aggregation, an outlier, two clones)."""
    whole, whole_pushes = _train_fake_group(tmp_path / "whole", monkeypatch, most=32, block=1 << 22)
    chunked, pushes = _train_fake_group(tmp_path / "chunked", monkeypatch, most=2, block=1 << 16)
    assert [len(p) for p in whole_pushes] == [5, 5, 5]  # two rounds and the final evaluation
    assert [len(p) for p in pushes] == [2, 2, 1] * 3
    for push in pushes:  # the chunk's requests share one encoding of the group's weights
        assert all(m.content["encoder"] is push[0].content["encoder"] for m in push)
        assert len({m.content["institution"]["institution"] for m in push}) == len(push)
    a, b = whole["groups"]["g"], chunked["groups"]["g"]
    assert a["weights_sha256"] == b["weights_sha256"] and a["rounds_applied"] == b["rounds_applied"] == 2
    assert [r["refused"].keys() for r in a["history"]] == [r["refused"].keys() for r in b["history"]] == [{"m4"}] * 2
    assert [r["shares"] for r in a["history"]] == [r["shares"] for r in b["history"]]
    assert a["history"][0]["shares"]["m1"] == a["history"][0]["shares"]["m2"] == a["history"][0]["shares"]["m0"] / 2
    assert whole["failures"] == chunked["failures"] == [
        {"phase": "train", "round": r, "institution": "m4", "reason": a["history"][r - 1]["refused"]["m4"]}
        for r in (1, 2)]


def test_discover_binds_simulated_declared_and_idle_nodes(tmp_path: Path, eurosat_manifest: Path) -> None:
    nodes = simulated_nodes(2)
    nodes[300] = {"institution": "lab", "sensor": "sentinel2_l1c", "task": "scene", "data-path": str(eurosat_manifest)}
    nodes[400] = {}  # declares nothing: idle
    grid = InProcessGrid(nodes)
    run_dir = run_experiment(grid, _run_config(tmp_path, eurosat_manifest, ["a", "b", "c"]), flower_run_id=5)

    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    where = {name: m["node_id"] for name, m in roster["institutions"].items()}
    assert where == {"a": 100, "b": 101, "c": 100, "lab": 300}
    assert roster["institutions"]["lab"]["simulated"] is False
    assert roster["institutions"]["a"]["summary"]["tiles"] == {"test": 20, "train": 80, "val": 20}
    assert roster["groups"] == {"sentinel2_l1c-scene": {
        "name": "sentinel2_l1c-scene", "sensor": "sentinel2_l1c", "task": "scene", "task_type": "classification",
        "classes": roster["institutions"]["a"]["summary"]["classes"], "members": ["a", "b", "c", "lab"]}}
    assert roster["idle_nodes"] == [{"node_id": 400, "reason": "declares no institution"}]
    assert roster["failures"] == []
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text())
    assert checkpoint["phases"]["discover"]["status"] == "done" and checkpoint["flower_runs"] == [5]


def test_failed_and_silent_nodes_are_reported_and_left_out(tmp_path: Path, eurosat_manifest: Path) -> None:
    def faults(message):
        record = message.content.config_records.get("institution", {})
        return {"b": "disk on fire", "c": "drop"}.get(record.get("institution"))

    grid = InProcessGrid(simulated_nodes(3), faults=faults)
    run_dir = run_experiment(grid, _run_config(tmp_path, eurosat_manifest, ["a", "b", "c"]), flower_run_id=1)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert list(roster["institutions"]) == ["a"]
    reasons = {f["institution"]: f["reason"] for f in roster["failures"]}
    assert reasons["b"].startswith("disk on fire") and "no reply within" in reasons["c"]


def test_reported_bands_are_checked_at_discover_and_carried_in_the_roster(tmp_path: Path,
                                                                          eurosat_manifest: Path) -> None:
    def bands(message):  # b reports a radar band, c a band its sensor lacks, d redefines B04, e a GSD of 1e9 m
        name = message.content.config_records.get("institution", {}).get("institution")
        if message.metadata.message_type != "query.describe" or name not in ("b", "c", "d", "e"):
            return None

        def tamper(reply):
            summary = reply.content.config_records["summary"]
            if name in ("b", "c"):
                summary["bands"] = [{"b": "VV", "c": "B99"}[name]] + summary["bands"][1:]
                return reply
            sensor = json.loads(summary["sensor"])
            band = next(b for b in sensor["bands"] if b["name"] == "B04")
            band.update({"wavelength_nm": 700.0} if name == "d" else {"gsd_m": 1e9})
            summary["sensor"] = json.dumps(sensor)
            return reply

        return tamper

    grid = InProcessGrid(simulated_nodes(1), faults=bands)
    run_dir = run_experiment(grid, _run_config(tmp_path, eurosat_manifest, ["a", "b", "c", "d", "e"]), flower_run_id=1)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert list(roster["institutions"]) == ["a"]
    assert roster["institutions"]["a"]["bands"] == roster["institutions"]["a"]["summary"]["bands"]
    assert len(roster["institutions"]["a"]["bands"]) == 13
    reasons = {f["institution"]: f["reason"] for f in roster["failures"]}
    assert "summary.bands ['VV'] are not image bands of its sensor 'sentinel2_l1c'" in reasons["b"]
    assert "summary.bands ['B99'] are not image bands" in reasons["c"]
    assert "band 'B04' conflicts with its known definition: wavelength_nm 700.0 (known: 664.6)" in reasons["d"]
    assert "summary.sensor is refused" in reasons["e"] and "gsd_m must be in" in reasons["e"]


def test_bad_data_and_half_declared_nodes_fail_with_reasons(tmp_path: Path, eurosat_manifest: Path) -> None:
    nodes = {
        1: {"institution": "lab", "task": "scene", "data-path": str(eurosat_manifest)},  # no sensor
        2: {"institution": "radar", "sensor": "sentinel1_grd", "task": "scene", "data-path": str(eurosat_manifest)},
    }
    with pytest.raises(RuntimeError, match="0 usable institution") as err:
        run_experiment(InProcessGrid(nodes), _run_config(tmp_path, eurosat_manifest, []), flower_run_id=1)
    assert "'sensor' is missing" in str(err.value)
    assert "no sentinel1_grd tiles" in str(err.value)


def test_rerun_resumes_and_refuses_another_config(tmp_path: Path, eurosat_manifest: Path) -> None:
    config = _run_config(tmp_path, eurosat_manifest, ["a"], run_name="same")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(1)), config, flower_run_id=1)
    run_experiment(InProcessGrid(simulated_nodes(1)), config, flower_run_id=2)
    assert json.loads((run_dir / "checkpoint.json").read_text())["flower_runs"] == [1, 2]
    changed = _run_config(tmp_path, eurosat_manifest, ["a"], extra="seed=7", run_name="same")
    with pytest.raises(ValueError, match="started with another config"):
        run_experiment(InProcessGrid(simulated_nodes(1)), changed, flower_run_id=3)


def test_experiment_config_errors_name_the_culprit() -> None:
    with pytest.raises(ValueError, match="federation.min_nodes"):
        load_experiment(RunSettings("quick", ("federation.min_nodes=lots",), "r"))
    with pytest.raises(ValueError, match="prune.baseline must be 'random_twin' or 'none', got 'twins'"):
        load_experiment(RunSettings("quick", ("prune.baseline=twins",), "r"))
    with pytest.raises(ValueError, match="experiment/nope"):
        load_experiment(RunSettings("nope", (), "r"))
    with pytest.raises(ValueError, match="run-name"):
        RunSettings.from_run_config({"run-name": "../escape"})
    assert RunSettings.from_run_config({"experiment": "quick", "overrides": "a=1 'b=x y'"}).overrides == ("a=1", "b=x y")


def test_an_institution_resize_reaches_its_node_and_its_tiles(tmp_path: Path, eurosat_manifest: Path) -> None:
    from clients.institution import InstitutionSpec
    from clients.training import _dataset
    from server.phases.discover import simulated_record
    from specialists.card import SpecialistCard

    lab = f"+institutions.lab={{sensor:sentinel2_l1c,task:scene,manifest:{eurosat_manifest},resize:16}}"
    overrides = ("~institutions", lab, "+proxy.resize.sentinel2_l1c=24")
    cfg, _ = load_experiment(RunSettings("quick", overrides, "r"))
    assert cfg.proxy.resize == {"sentinel2_l1c": 24}
    record = simulated_record(cfg, "lab", tmp_path)
    spec = InstitutionSpec.from_record(record, "request")
    assert record["resize"] == "16" and spec.resize == 16
    bands = list(get_sensor("sentinel2_l1c").image_bands)
    card = SpecialistCard(name="lab", institutions=["lab"], sensor="sentinel2_l1c", bands=bands,
                          norm_mean=[0.1] * 13, norm_std=[0.1] * 13, task="scene", task_type="classification",
                          classes=["a", "b"])
    assert _dataset(Manifest.load(eurosat_manifest), spec, card, "train")[0]["image"].shape == (13, 16, 16)
    with pytest.raises(ValueError, match=r"request: 'resize' must be a size in pixels, 1..2048, got '4096'"):
        InstitutionSpec.from_record({**record, "resize": "4096"}, "request")
    with pytest.raises(ValueError, match=r"institutions.lab: resize is a size in pixels"):
        load_experiment(RunSettings("quick", ("~institutions", lab.replace("resize:16", "resize:-1")), "r"))


def test_build_once_builds_one_folder_under_concurrency(tmp_path: Path) -> None:
    builds = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        (tmp / "part").write_text("half")
        time.sleep(0.2)
        (tmp / "manifest.json").write_text("{}")

    folder = tmp_path / "worlds" / "w"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: build_once(folder, build), range(4)))
    assert results == [folder] * 4 and len(builds) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "part"]
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == ["w"]  # no temporary folder left


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def build(tmp: Path) -> None:
        (tmp / "part").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_once(tmp_path / "w", build)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_simulated_institutions_generate_their_world_slice_once(tmp_path: Path) -> None:
    overrides = (f"output_dir={tmp_path} world=tiny ~institutions world.tiles_per_institution=2 stop_after=discover "
                 "+institutions.north_s2={sensor:sentinel1_grd,task:scene} "
                 "+institutions.city_aerial={sensor:aerial_rgbn,task:landcover}")
    config = {"experiment": "default", "overrides": overrides, "run-name": "w"}
    run_dir = run_experiment(InProcessGrid(simulated_nodes(1)), config, flower_run_id=1)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert roster["institutions"]["north_s2"]["summary"]["bands"] == ["VV", "VH"]
    assert roster["institutions"]["city_aerial"]["summary"]["task_type"] == "segmentation"
    assert sorted(roster["groups"]) == ["aerial_rgbn-landcover", "sentinel1_grd-scene"]
    slices = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache" / "worlds").iterdir() if p.is_dir())
    assert slices == ["tiny-city_aerial-aerial_rgbn", "tiny-north_s2-sentinel1_grd"]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.tif")}
    run_experiment(InProcessGrid(simulated_nodes(1)), {**config, "run-name": "w2"}, flower_run_id=2)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.tif")} == before


def test_pipeline_fedavg_rejects_malformed_update_enrols_distils_evaluates_prunes(tmp_path: Path) -> None:
    evaluations = []  # (node, records carried) of each evaluate.fusion request as it leaves the coordinator

    def poison(message):  # south_s2's first-round update comes back with NaN weights
        if message.metadata.message_type == "evaluate.fusion":
            evaluations.append((message.metadata.dst_node_id, set(message.content)))
        record = message.content.config_records.get("institution", {})
        if message.metadata.message_type != "train.specialist" or record.get("institution") != "south_s2":
            return None
        if message.content.config_records["train"]["seed"] != 1:  # seed * 1000 + round, seed 0
            return None

        def tamper(reply):
            state = reply.content.array_records["encoder"].to_torch_state_dict()
            first = next(iter(state))
            state[first] = torch.full_like(state[first], float("nan"))
            reply.content.array_records["encoder"] = ArrayRecord(state)
            return reply

        return tamper

    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), faults=poison), tiny_run_config(tmp_path), flower_run_id=1)
    result = json.loads((run_dir / "phases" / "train.json").read_text())
    assert [(f["round"], f["institution"]) for f in result["failures"]] == [(1, "south_s2")]
    assert "non-finite" in result["failures"][0]["reason"]
    assert sorted(result["groups"]) == ["aerial_rgbn-landcover", "sentinel2_l2a-scene"]
    pair = result["groups"]["sentinel2_l2a-scene"]
    assert pair["members"] == ["north_s2", "south_s2"] and pair["rounds_applied"] == 2
    assert [sorted(r["institutions"]) for r in pair["history"]] == [["north_s2"], ["north_s2", "south_s2"]]
    assert set(pair["per_institution"]["north_s2"]) >= {"val_accuracy", "test_accuracy", "test_count"}
    assert "test_miou" in result["groups"]["aerial_rgbn-landcover"]["metrics"]
    assert not (run_dir / pair["specialist"] / "weights.safetensors").exists()  # the coordinator keeps the card only
    registry = Registry(run_dir / "registry")
    assert registry.names == ["aerial_rgbn-landcover", "sentinel2_l2a-scene"]
    specialist = registry.load("sentinel2_l2a-scene")
    assert specialist.card.institutions == ["north_s2", "south_s2"] and "test_accuracy" in specialist.card.metrics
    assert specialist.card.weights_sha256 == pair["weights_sha256"]
    student = load_student(run_dir / "student")
    assert {t["name"] for t in student.card.teachers} == set(registry.names)
    evaluation = json.loads((run_dir / "phases" / "evaluate.json").read_text())
    assert sorted(evaluation["institutions"]) == ["city_aerial", "north_s2", "south_s2"]
    encoders = {r["encoder"] for r in evaluation["institutions"]["north_s2"]["results"]}
    assert encoders == {"student", "ensemble", "random-init", "band-stats"}
    pruned = json.loads((run_dir / "phases" / "prune.json").read_text())
    assert sorted(pruned["kept"] + pruned["dropped"]) == registry.names
    assert Registry(run_dir / "registry_pruned").names == pruned["kept"]
    assert pruned["scores"] and {c["baseline"] for c in pruned["scores"]} == {"random twin"}
    report = (run_dir / "report.md").read_text()
    for section in ("## Train", "## Enrol", "## Distill", "## Evaluate", "## Prune", "## Failures"):
        assert section in report
    assert "| institution | sensor | metric | labels | student | ensemble | random-init | band-stats |" in report
    assert "non-finite" in report and (run_dir / "plots" / "train_rounds.png").stat().st_size > 0
    summary = json.loads((run_dir / "report.json").read_text())
    assert summary["phases"]["enrol"]["traffic"]["received"] > 1_000_000  # two specialists' weights
    assert summary["prune"]["kept"] == pruned["kept"]
    assert all(summary["phases"][n]["energy"]["wh"] > 0 for n in ("train", "distill", "evaluate"))
    assert summary["energy"]["total"]["wh"] > 0 and summary["energy"]["method"][0].startswith("CodeCarbon")
    assert "## Energy and carbon" in report
    # node 100 hosts north_s2 and city_aerial: the student goes to it once, the second request refers to it
    assert sorted(node for node, _ in evaluations) == [100, 100, 101]
    second = [records for node, records in evaluations if node == 100][1]
    assert "held" in second and "student_weights" not in second


def test_weights_home_mode_enrols_cards_and_distils_from_remote_features(tmp_path: Path) -> None:
    extra = ("enrol.weights=home ~institutions.south_s2 prune.keep_top_k=1 prune.redistill=true "
             "prune.redistill_epochs=1")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2)), tiny_run_config(tmp_path, extra), flower_run_id=1)
    registry = Registry(run_dir / "registry")
    assert registry.local_names == [] and {e.holder for e in registry.entries} == {"city_aerial", "north_s2"}
    assert not list((run_dir / "registry").rglob("*.safetensors"))  # no weights reached the coordinator's registry
    enrol = json.loads((run_dir / "phases" / "enrol.json").read_text())
    assert enrol["traffic"]["received"] < 100_000  # cards only
    distill = json.loads((run_dir / "phases" / "distill.json").read_text())
    assert sorted(distill["remote_teachers"]) == registry.names and distill["local_teachers"] == []
    assert distill["traffic"]["messages"] == 2 and distill["traffic"]["received"] > 0
    evaluation = json.loads((run_dir / "phases" / "evaluate.json").read_text())
    assert {r["encoder"] for r in evaluation["institutions"]["north_s2"]["results"]} == {
        "student", "random-init", "band-stats"}
    assert "stay home" in evaluation["ensemble_not_evaluated"]["north_s2"]
    pruned = json.loads((run_dir / "phases" / "prune.json").read_text())
    assert pruned["scores"] and len(pruned["kept"]) == 1 and len(pruned["dropped"]) == 1
    # the pruned student: warm-started, taught by the kept (remote) teacher's cached targets, no new request
    redistill = pruned["redistill"]
    student = load_student(run_dir / "student_pruned")
    assert [t["name"] for t in student.card.teachers] == pruned["kept"] == redistill["pruned"]["teachers"]
    assert student.card.distill["total_epochs"] == 1 + 1 and student.card.weights_sha256 == redistill["weights_sha256"]
    assert sorted(redistill["full"]["teachers"]) == registry.names and redistill["pruned"]["teacher_extractions"] == 0
    assert pruned["traffic"]["messages"] == 0 and 0 <= redistill["pruned"]["probe"] <= 1
    assert "### Pruned student" in (run_dir / "report.md").read_text()
    summary = json.loads((run_dir / "report.json").read_text())
    assert summary["prune"]["redistill"]["pruned"]["teachers"] == pruned["kept"]


def _training_recorder():
    """A list and an :class:`InProcessGrid` fault hook that appends the institution of every train request."""
    trained = []

    def record(message):
        if message.metadata.message_type == "train.specialist":
            trained.append(message.content.config_records["institution"]["institution"])
        return None

    return trained, record


def test_integrate_mode_trains_only_the_new_institution_and_warm_starts_the_student(tmp_path: Path) -> None:
    first = run_experiment(InProcessGrid(simulated_nodes(2)), tiny_run_config(tmp_path, "~institutions.city_aerial"),
                           flower_run_id=1)
    before = Registry(first / "registry")
    assert before.names == ["sentinel2_l2a-scene"]
    config = tiny_run_config(tmp_path, "integrate=fl")
    config["run-name"] = "fl-plus-aerial"
    trained, record = _training_recorder()
    second = run_experiment(InProcessGrid(simulated_nodes(2), faults=record), config, flower_run_id=2)
    assert set(trained) == {"city_aerial"}  # only the new institution trains
    train = json.loads((second / "phases" / "train.json").read_text())
    assert train["groups"]["sentinel2_l2a-scene"]["integrated_from"] == "fl"
    assert train["groups"]["aerial_rgbn-landcover"]["rounds_applied"] == 2
    after = Registry(second / "registry")
    assert after.names == ["sentinel2_l2a-scene", "aerial_rgbn-landcover"]  # N + 1
    old = "sentinel2_l2a-scene/weights.safetensors"
    assert (second / "registry" / old).read_bytes() == (first / "registry" / old).read_bytes()
    student = load_student(second / "student")
    assert student.card.distill["total_epochs"] == 2  # one epoch in each run: warm-started
    assert {t["name"] for t in student.card.teachers} == set(after.names)


def test_integrate_mode_admits_a_partner_whose_sensor_only_its_node_knows(tmp_path: Path, eurosat_manifest: Path) -> None:
    """Issue 22 with ``integrate``: a new partner with a new sensor (its node config only) joins a finished
    federation; only it trains, the earlier group is reused, and the warm-started student reads its bands."""
    first = run_experiment(InProcessGrid(simulated_nodes(1)), tiny_run_config(
        tmp_path, "~institutions.south_s2 ~institutions.city_aerial"), flower_run_id=1)
    manifest, yaml_path = _user_sensor_manifest(tmp_path, eurosat_manifest, "t_labcam", "LAB_")
    node = {"institution": "lab", "sensor": "t_labcam", "task": "scene", "data-path": str(manifest),
            "sensors": str(yaml_path)}
    config = tiny_run_config(tmp_path, "~institutions.south_s2 ~institutions.city_aerial federation.min_nodes=2 "
                                       "integrate=fl")
    config["run-name"] = "fl-plus-lab"
    trained, record = _training_recorder()
    second = run_experiment(InProcessGrid({**simulated_nodes(1), 300: node}, faults=record), config, flower_run_id=2)
    assert set(trained) == {"lab"}
    train = json.loads((second / "phases" / "train.json").read_text())
    assert train["groups"]["sentinel2_l2a-scene"]["integrated_from"] == "fl"
    after = Registry(second / "registry")
    assert sorted(after.names) == ["sentinel2_l2a-scene", "t_labcam-scene"]
    assert after.card("t_labcam-scene").band_descriptors["LAB_B04"]["wavelength_nm"] == 664.6
    old = "sentinel2_l2a-scene/weights.safetensors"
    assert (second / "registry" / old).read_bytes() == (first / "registry" / old).read_bytes()
    student = load_student(second / "student")  # t_labcam is unknown in this process
    assert student.card.distill["total_epochs"] == 2 and "LAB_B04" in student.card.band_stats
    lab_bands = tuple(after.card("t_labcam-scene").bands)
    assert student.pooled(torch.rand(1, len(lab_bands), 32, 32), lab_bands).shape[0] == 1


def test_prune_without_scorable_proxy_tiles_is_reported_not_available(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, "~institutions.south_s2 ~institutions.city_aerial proxy.tiles_per_institution=1")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(1)), config, flower_run_id=1)
    pruned = json.loads((run_dir / "phases" / "prune.json").read_text())
    assert pruned["kept"] == ["sentinel2_l2a-scene"] and pruned["note"].startswith("not available")
    assert "not available" in (run_dir / "report.md").read_text()


def _user_sensor_manifest(tmp_path: Path, eurosat_manifest: Path, name: str = "lab_s2",
                          prefix: str = "") -> tuple[Path, Path]:
    """EuroSAT's first 40 tiles relabelled as sensor ``name``, known only from a YAML elsewhere (:func:`as_new_sensor`)."""
    manifest = Manifest.load(eurosat_manifest)
    manifest.tiles = manifest.tiles[:40]
    manifest.save(tmp_path / "first40" / "manifest.json")
    return as_new_sensor(tmp_path / "first40" / "manifest.json", tmp_path, name, prefix)


def test_user_sensor_from_node_config_and_run_config(tmp_path: Path, eurosat_manifest: Path) -> None:
    manifest, yaml_path = _user_sensor_manifest(tmp_path, eurosat_manifest)
    node = {"institution": "lab", "sensor": "lab_s2", "task": "scene", "data-path": str(manifest)}
    config = {"experiment": "default", "run-name": "u", "overrides": (
        f"~institutions output_dir={tmp_path} federation.node_wait_s=1 federation.reply_timeout_s=5 "
        "stop_after=discover")}
    with pytest.raises(RuntimeError, match="lab_s2"):  # without the YAML the partner cannot describe its data
        run_experiment(InProcessGrid({300: node}), {**config, "run-name": "missing"}, flower_run_id=1)
    run_dir = run_experiment(InProcessGrid({300: {**node, "sensors": str(yaml_path)}}), config, flower_run_id=2)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert roster["institutions"]["lab"]["sensor"] == "lab_s2"
    assert roster["institutions"]["lab"]["summary"]["sensor"]["name"] == "lab_s2"  # the summary describes it
    cfg, _ = load_experiment(RunSettings("default", (f"sensor_files=[{yaml_path}]",), "r"))
    assert "lab_s2" in cfg.catalog().sensors  # the run config's sensor files: the coordinator's own catalog
    with pytest.raises(ValueError, match="unknown sensor 'lab_s2'"):
        get_sensor("lab_s2")  # neither the node's nor the run config's file registered anything here


@pytest.mark.parametrize("weights", ["send", "home"])
def test_a_partner_sensor_known_only_at_its_node_trains_enrols_and_reaches_the_student(
        tmp_path: Path, eurosat_manifest: Path, weights: str) -> None:
    """Issue 22: a declared partner with a new sensor (new band names) in its node config only; the coordinator is
    given no sensor file. Its summary carries the descriptors, so it is admitted, trains, enrols; the proxy
    renders its sensor from the federation catalog; the student learns its bands and reads them after loading."""
    manifest, yaml_path = _user_sensor_manifest(tmp_path, eurosat_manifest, "t_labcam", "LAB_")
    node = {"institution": "lab", "sensor": "t_labcam", "task": "scene", "data-path": str(manifest),
            "sensors": str(yaml_path)}
    config = tiny_run_config(tmp_path, "~institutions.south_s2 ~institutions.city_aerial federation.min_nodes=2 "
                                       f"enrol.weights={weights}")
    run_dir = run_experiment(InProcessGrid({**simulated_nodes(1), 300: node}), config, flower_run_id=1)
    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    assert roster["failures"] == [] and roster["groups"]["t_labcam-scene"]["members"] == ["lab"]
    registry = Registry(run_dir / "registry")
    card = registry.card("t_labcam-scene")
    assert card.bands[0] == "LAB_B01" and card.band_descriptors["LAB_B04"]["wavelength_nm"] == 664.6
    student = load_student(run_dir / "student")  # in this process t_labcam and its bands are unknown
    with pytest.raises(ValueError, match="unknown sensor 't_labcam'"):
        get_sensor("t_labcam")
    assert "LAB_B04" in student.card.band_stats and student.catalog.band("LAB_B04").wavelength_nm == 664.6
    lab_bands = tuple(card.bands)
    assert student.pooled(torch.rand(1, len(lab_bands), 32, 32), lab_bands).shape[0] == 1
    distilled = json.loads((run_dir / "phases" / "distill.json").read_text())
    assert "t_labcam-scene" in distilled["teachers"] and distilled["failures"] == []
    assert ("t_labcam-scene" in distilled["remote_teachers"]) == (weights == "home")
    evaluation = json.loads((run_dir / "phases" / "evaluate.json").read_text())["institutions"]
    assert any(r["encoder"] == "student" for r in evaluation["lab"]["results"])
