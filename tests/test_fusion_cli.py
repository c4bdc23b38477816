"""``eosfed distill`` -> ``eosfed evaluate`` -> ``eosfed prune`` on a tiny synthetic world."""

import json
import logging

from fusion_toys import TOLERANCE_NM, make_registry

from eosfed.cli import main
from fusion import Ensemble, Registry, load_student
from geodata.readers.folders import build_folder_manifest
from geodata.synth import generate_world, load_world_config


def test_distill_evaluate_prune_chain(tmp_path):
    generate_world(load_world_config("tiny"), tmp_path / "world", progress=False)
    manifest = str(tmp_path / "world" / "manifest.json")
    make_registry(tmp_path / "registry")
    run = tmp_path / "run"
    assert main(["distill", "--registry", str(tmp_path / "registry"), "--proxy", manifest, "--out", str(run),
                 "--epochs", "2", "--batch-size", "4", "--size", "32"]) == 0
    student = load_student(run / "student")
    assert {t["name"] for t in student.card.teachers} == {"s2", "s1", "aerial"}
    assert len(json.loads((run / "distill_history.json").read_text())["total"]) == 2
    assert all(Registry(tmp_path / "registry").feature_stats(n) is not None for n in ("s2", "s1", "aerial"))

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--encoder", str(run / "student"), "--encoder", "random:convnextv2_atto",
                 "--manifest", manifest, "--task", "scene", "--sensor", "sentinel2_l2a", "--out", str(out),
                 "--fractions", "1", "--seeds", "0", "--size", "32"]) == 0
    rows = json.loads(out.read_text())
    assert {(r["encoder"], r["method"]) for r in rows} == {
        (e, m) for e in ("student", "random:convnextv2_atto", "band-stats") for m in ("linear", "knn")}  # atto: the
    # student's random-init twin is random:convnextv2_atto, one row
    table = out.with_suffix(".md").read_text()
    assert "| student | scene | linear |" in table and "| band-stats | scene | linear |" in table

    assert main(["evaluate", "--encoder", str(run / "student"), "--manifest", manifest, "--task", "scene",
                 "--sensor", "sentinel2_l2a", "--out", str(out), "--overwrite", "--fractions", "1", "--seeds", "0",
                 "--size", "32", "--no-baselines", "--normalise", "task", "--methods", "linear"]) == 0
    task_norm = json.loads(out.read_text())
    assert [r["encoder"] for r in task_norm] == ["student"]
    assert task_norm[0]["method"] == "linear" and 0 <= task_norm[0]["mean"] <= 1

    shards = sorted((run / "teacher_cache").rglob("*.safetensors"))
    assert main(["prune", "--registry", str(tmp_path / "registry"), "--manifest", manifest,
                 "--eval", "presence@sentinel2_l2a", "--out", str(tmp_path / "pruned"), "--keep-top-k", "1",
                 "--no-drop-nonpositive", "--permutations", "10", "--size", "32",
                 "--redistill", "--redistill-epochs", "1", "--student", str(run), "--batch-size", "4"]) == 0
    pruned = Registry(tmp_path / "pruned")
    assert len(pruned) == 2  # the lower of s2/aerial leaves; s1 could not be scored and stays
    report = (tmp_path / "pruned" / "prune_report.md").read_text()
    assert "kept (unscored)" in report and "taken against: random twin" in report
    assert Ensemble.from_registry(pruned, tolerance_nm=TOLERANCE_NM).applicable(("B02", "B03", "B04", "B08")) != ["s2", "aerial"]
    # --redistill: the full student distilled one more epoch on the kept teachers, from the distill run's cache
    pruned_student = load_student(tmp_path / "pruned" / "student_pruned")
    assert {t["name"] for t in pruned_student.card.teachers} == set(pruned.names)
    assert pruned_student.card.distill["total_epochs"] == 3  # 2 of the full student's, 1 more
    assert pruned_student.card.distill["last_config"]["epochs"] == 1
    record = json.loads((tmp_path / "pruned" / "redistill.json").read_text())
    assert len(record["full"]["teachers"]) == 3 and sorted(record["pruned"]["teachers"]) == sorted(pruned.names)
    assert record["pruned"]["teacher_extractions"] == 0 and record["cache"] == str(run / "teacher_cache")
    assert sorted((run / "teacher_cache").rglob("*.safetensors")) == shards  # read, never extended
    assert all(0 <= record[side]["probe"] <= 1 for side in ("full", "pruned"))


def test_a_random_encoder_and_the_random_init_baseline_are_one_row(tmp_path, shared_data, caplog):
    build_folder_manifest(shared_data / "aid", tmp_path / "aid", "rgb", classes=["Beach", "Forest"], per_class=4,
                          test_count=2)
    out = tmp_path / "eval.json"
    caplog.set_level(logging.INFO, "eosfed.commands.evaluate")
    assert main(["evaluate", "--encoder", "random:convnextv2_atto", "--manifest", str(tmp_path / "aid" / "manifest.json"),
                 "--task", "scene", "--sensor", "rgb", "--out", str(out), "--fractions", "1", "--seeds", "0",
                 "--size", "32", "--methods", "linear"]) == 0
    assert [r["encoder"] for r in json.loads(out.read_text())] == ["random:convnextv2_atto", "band-stats"]
    assert "baseline random-init is the requested random:convnextv2_atto" in caplog.text


def test_phase_and_command_games_are_one_function(tmp_path):
    """Issue 22: ``pipeline.contrib.play_games`` builds every prune game (phase *prune* and ``eosfed prune``): a
    player's features come from the teacher cache when it holds them (a specialist whose weights stay home takes
    part this way), else from its local weights; a holder without cached features sits out."""
    from fusion.data import labelled_loader
    from fusion.teacher_cache import TeacherCache, extract_teacher_features
    from geodata.manifest import Manifest
    from pipeline.contrib import Game, play_games
    from pipeline.settings import PruneSettings
    from specialists import load_specialist

    manifest = generate_world(load_world_config("tiny"), tmp_path / "world", progress=False)
    full = make_registry(tmp_path / "full")
    mixed = Registry.create(tmp_path / "mixed")
    mixed.add_card(full.card("s2"), holder="north")  # its weights stay at institution north
    mixed.add(load_specialist(full.root / "aerial"))
    sensor, task = "sentinel2_l2a", "presence"
    game = Game(task, sensor, manifest.select(sensor=sensor, split="train", task=task),
                manifest.select(sensor=sensor, split="test", task=task), 32)
    settings = PruneSettings(permutations=4)
    kwargs = {"seed": 0, "tolerance_nm": TOLERANCE_NM, "batch_size": 8}

    alone, _, played = play_games([game], Manifest.load(manifest.source), mixed, settings, **kwargs)
    assert played == [game] and {c.name for c in alone[0]} == {"aerial"}  # s2 sits out: no weights, no features
    cache = TeacherCache()
    s2 = full.load("s2")
    for split in ("train", "test"):
        cache.put(s2.card.weights_sha256, extract_teacher_features(
            s2, labelled_loader(manifest, sensor, task, split, 32, 8), TOLERANCE_NM))
    both, cka, _ = play_games([game], manifest, mixed, settings, cache=cache, **kwargs)
    assert {c.name for c in both[0]} == {"s2", "aerial"} and sorted(cka[0]) == ["aerial", "s2"]
