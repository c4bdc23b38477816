"""The federation-cost benchmark: its memory sampler, its generated institutions, and the script end
to end on tiny configs (bytes per phase in process; a scaling row through ``flwr run .``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.settings import RunSettings, load_experiment

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "federation_cost.py"
TINY = ("world=tiny world.tiles_per_institution=4 ~institutions +institutions.north_s2={sensor:sentinel2_l2a,task:scene} "
        "+institutions.city_aerial={sensor:aerial_rgbn,task:landcover} train.rounds=1 train.local_epochs=1 "
        "train.batch_size=2 world.aerial_factor=2 proxy.tiles_per_institution=4 proxy.batch_size=8 distill.epochs=1 prune.permutations=4")


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("federation_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = torch.get_num_threads()
    yield module
    torch.set_num_threads(before)


def test_scale_overrides_give_n_world_institutions_in_three_groups(benchmark) -> None:
    cfg, _ = load_experiment(RunSettings("quick", tuple(benchmark.scale_overrides(7, 5)), "x"))
    assert list(cfg.institutions) == [f"inst{i:02d}" for i in range(7)]
    assert [w["name"] for w in cfg.world["institutions"]] == list(cfg.institutions)
    assert cfg.world["tiles_per_institution"] == 5 and cfg.world["tile_size"] == 32
    kinds = [(i.sensor, i.task) for i in cfg.institutions.values()]
    assert kinds[:3] == list(benchmark.SCALE_KINDS) and kinds[3] == benchmark.SCALE_KINDS[0]
    assert all(w["sensors"] == [i.sensor] for w, i in zip(cfg.world["institutions"], cfg.institutions.values()))


def test_tree_sampler_sums_a_process_and_its_children(benchmark) -> None:
    grow = "import time; x = b'x' * (200 * 2**20); time.sleep(3)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {grow!r}]); {grow}"])
    try:
        with benchmark.TreeSampler(lambda: {parent.pid}, 0.2) as sampler:
            parent.wait(timeout=30)
    finally:
        parent.kill()
    peak = sampler.peak()
    assert peak["processes"] == 2 and peak["rss_mb"] >= 400 and peak["pss_mb"] >= 400
    assert sampler.peak(0, 1) == {}


@pytest.mark.federation  # through the loaded benchmark script
def test_bytes_section_compares_weights_and_features_only(benchmark, tmp_path: Path) -> None:
    record = benchmark.main(["--sections", "bytes", "--overrides", TINY, "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "federation_cost.json").read_text())
    assert saved["bytes"]["modes"].keys() == {"send", "home"} == record["bytes"]["modes"].keys()
    send, home = (saved["bytes"]["modes"][m]["phases"] for m in ("send", "home"))
    assert list(send) == list(benchmark.PHASES) == list(home)
    # weights mode uploads the specialists at enrolment; features-only mode sends cards and answers
    # the coordinator's proxy batches with features in the distill phase instead
    assert send["enrol"]["received"] > 1e6 > home["enrol"]["received"]
    assert send["distill"]["messages"] == 0 < home["distill"]["messages"]
    assert home["distill"]["sent"] > 0 and home["distill"]["received"] > 0
    assert all(p["seconds"] > 0 for p in send.values())
    assert saved["bytes"]["modes"]["send"]["peak"]["rss_mb"] > 0
    assert "| enrol |" in (tmp_path / "out" / "federation_cost.md").read_text()


@pytest.mark.flower  # through the loaded benchmark script, which the lane detection does not follow
def test_scaling_row_through_flwr_run(benchmark, tmp_path: Path) -> None:
    record = benchmark.main(["--sections", "scaling", "--scales", "2", "--scale-tiles", "6", "--scale-nodes", "2",
                             "--scale-overrides", "train.rounds=1 train.batch_size=2 distill.epochs=1 "
                             "proxy.tiles_per_institution=6 prune.permutations=2", "--timeout-s", "240",
                             "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    [row] = record["scaling"]["rows"]
    assert row["status"] == "finished:completed" and row["num_supernodes"] == 2
    # of 2 institutions one holds real samples (a EuroSAT half, Sentinel-2 L1C), the other a generated world
    assert row["groups"] == {"sentinel2_l2a-scene": 1, "sentinel2_l1c-scene": 1}
    assert list(row["phases"]) == list(benchmark.PHASES)
    assert row["peak"]["processes"] >= 3 and row["peak"]["pss_mb"] > 100
    assert row["wall_s"] > row["phase_seconds"] > 0
    assert "| 2 | 1 | 2 |" in (tmp_path / "out" / "federation_cost.md").read_text()  # institutions, real, nodes


def test_targets_set_the_medians_against_the_goals(benchmark) -> None:
    phases = {n: {"seconds": 10.0, "energy": {"seconds": 10.0, "wh": 0.01, "co2e_g": 0.005}} for n in benchmark.PHASES}
    run = {"phases": phases, "load_before": [0.1], "federation_config": ["client-resources-num-cpus=1"]}
    record = {"default": {"walls_s": [170.0, 190.0], "median_wall_s": 180.0, "median_evaluate_share": 0.2,
                          "load_before": [0.1], **run},
              "overhead": {"experiment": "quick", "overrides": [], "median_wall_s": {"flower": 61.0},
                           "walls_s": {"flower": [60.0, 62.0]}, "ratio": 1.2, "flower": run, "in_process": run}}
    got = {t["target"].split(" (")[0]: (t["value"], t["met"]) for t in benchmark.targets(record)}
    assert got == {"default run seconds": (180.0, True), "evaluate share of the default run": (0.2, False),
                   "quick preset seconds": (61.0, False), "Flower overhead": (1.2, True),
                   "energy per phase present": (True, True)}
    phases["train"]["energy"] = None
    assert benchmark.targets(record)[-1]["met"] is False
    assert "| quick preset seconds (flwr run .) | 61 | <= 60 | **no** |" in "\n".join(
        benchmark._targets_md(benchmark.targets(record)))
